extension WebTemplates {
    // The plot and the lineage graph are drawn at their natural size (1 rem for 16 units of their viewBox: 12 px labels
    // at the default 16 px text, larger with a larger text setting; the lineage graph is 220, 470 or 720 units wide by
    // its columns) and never scaled down to fit: a phone would show them at half size, their labels
    // about 6 px tall. On a screen narrower than a figure, its own box scrolls sideways, as a wide table's does, and
    // the page never does; a container query shows the "scroll sideways" line only when the figure does not fit.
    static let stylesheet = """
        :root { color-scheme: light; }
        body { margin: 0; font: 16px/1.5 system-ui, sans-serif; color: #1a1a1a; background: #fff; }
        .bar { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: center; padding: .6rem 1rem; background: #17324d; color: #fff; }
        .bar a { color: #fff; }
        .brand { font-weight: 700; text-decoration: none; }
        .signout { margin-left: auto; display: flex; gap: .5rem; align-items: center; }
        main { max-width: 72rem; margin: 0 auto; padding: 1rem; }
        a { color: #0b4f9c; }
        h1 { font-size: 1.6rem; overflow-wrap: anywhere; }
        .card { border: 1px solid #c8ced6; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
        dl { display: grid; grid-template-columns: minmax(8rem, max-content) 1fr; gap: .25rem 1rem; }
        dt { font-weight: 600; }
        dd { margin: 0; overflow-wrap: anywhere; }
        .scroll { overflow-x: auto; }
        table { border-collapse: collapse; width: 100%; }
        th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #d5dae0; vertical-align: top; }
        code { font-size: .85em; overflow-wrap: anywhere; }
        .badge { display: inline-block; padding: .05rem .5rem; border-radius: 1rem; font-weight: 700; }
        .ok { background: #dff3e4; color: #0b5a25; }
        .bad { background: #fde2e5; color: #8f0b1f; }
        .alert { border-left: 4px solid #8f0b1f; padding: .5rem 1rem; background: #fdf0f1; }
        .hint, .crumbs { color: #4a4f55; }
        input, button { font: inherit; padding: .35rem .5rem; }
        input[type=password], input[type=search] { width: min(100%, 32rem); box-sizing: border-box; }
        button { background: #17324d; color: #fff; border: 1px solid #17324d; border-radius: 4px; cursor: pointer; }
        pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f3f5f7; padding: .5rem; }
        select { font: inherit; padding: .35rem .5rem; }
        form.inline { display: inline; }
        .grants { margin: 0; padding-left: 1rem; }
        .secret { font-size: 1rem; }
        .namespaces ul { display: flex; flex-wrap: wrap; gap: .25rem 1rem; padding: 0; list-style: none; }
        .namespaces h2 { font-size: 1rem; }
        .figure { margin: 1rem 0; container-type: inline-size; }
        .figure svg { display: block; height: auto; }
        .swipe { display: none; margin: .25rem 0 0; }
        @container (width < 40rem) { .plot-figure .swipe { display: block; } }
        @container (width < 13.75rem) { .lineage-figure.columns-1 .swipe { display: block; } }
        @container (width < 29.375rem) { .lineage-figure.columns-2 .swipe { display: block; } }
        @container (width < 45rem) { .lineage-figure.columns-3 .swipe { display: block; } }
        .plot { width: 40rem; }
        .plot .axis { stroke: #4a4f55; stroke-width: 1; }
        .plot .budget-line { stroke: #8f0b1f; stroke-width: 2; stroke-dasharray: 6 4; }
        .plot .spent-line { fill: none; stroke: #0b4f9c; stroke-width: 2.5; }
        .plot circle.within { fill: #0b4f9c; }
        .plot circle.over { fill: #8f0b1f; }
        .columns-1 .lineage { width: 13.75rem; }
        .columns-2 .lineage { width: 29.375rem; }
        .columns-3 .lineage { width: 45rem; }
        .lineage rect { fill: #fff; stroke: #4a4f55; stroke-width: 1.5; }
        .lineage rect.current { fill: #e6eef8; stroke: #0b4f9c; stroke-width: 2.5; }
        .lineage rect.dataset { fill: #f3f7ee; }
        .lineage rect.configuration { fill: #f7f3ee; }
        .lineage rect.hidden { stroke-dasharray: 4 3; }
        .lineage .edge { stroke: #4a4f55; stroke-width: 1.5; }
        .lineage text { font-size: 12px; fill: #1a1a1a; }
        .plot .label { font-size: 12px; fill: #1a1a1a; }
        .filters { display: flex; flex-wrap: wrap; gap: 0 1rem; align-items: end; }
        .filters label { display: block; }
        @media (max-width: 40rem) { dl { grid-template-columns: 1fr; } dd { margin-bottom: .5rem; } }

        """
}
