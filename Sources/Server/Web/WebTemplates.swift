// The web pages' templates, compiled into the binary: a resource bundle would have to travel next to the `coffer`
// executable, and a missing one stops the server at the first page. Values are only ever written with `{{ }}`, which
// HTML-escapes them; no template uses `{{{ }}}`.
enum WebTemplates {
    static let all: [String: String] = [
        "head": head, "foot": foot, "signin": signin, "models": models, "model": model, "version": version, "error": error, "audit": audit,
        "budgets": budgets, "budget": budget,
        "sessions": sessions,
        "tokens": tokens, "principals": principals, "request": request,
    ]

    static let head = """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>{{title}} · Coffer</title>
        <link rel="stylesheet" href="/static/coffer.css">
        </head>
        <body>
        <header class="bar">
        <a class="brand" href="/models">Coffer</a>
        {{#signedIn}}
        <nav aria-label="Main"><a href="/models">Models</a> <a href="/budgets">Budgets</a> <a href="/sessions">Sessions</a>{{#admin}} <a href="/tokens">Tokens</a> <a href="/principals">Principals</a> <a href="/audit">Audit log</a>{{/admin}}</nav>
        <form method="post" action="/signout" class="signout">
        <input type="hidden" name="csrf" value="{{csrf}}">
        <span>Signed in as {{principal}}</span>
        <button type="submit">Sign out</button>
        </form>
        {{/signedIn}}
        </header>
        <main>

        """

    static let foot = """
        </main>
        </body>
        </html>

        """

    static let signin = """
        {{> head}}
        <h1>Sign in</h1>
        {{#message}}<p class="alert" role="alert">{{message}}</p>{{/message}}
        <form method="post" action="/signin" class="card">
        <input type="hidden" name="csrf" value="{{formCSRF}}">
        <input type="hidden" name="next" value="{{next}}">
        <p><label for="token">API token</label>
        <input id="token" name="token" type="password" autocomplete="off" required placeholder="cft_..."></p>
        <p class="hint">A bearer token from <code>coffer token create</code>. It is exchanged for a session of 30 minutes and never shown again.</p>
        <p><button type="submit">Sign in</button></p>
        </form>
        {{> foot}}
        """

    static let models = """
        {{> head}}
        <h1>Models</h1>
        <form method="get" action="/models" class="search" role="search">
        <label for="q">Search by name</label>
        <input id="q" name="q" type="search" value="{{query}}">
        {{#namespace}}<input type="hidden" name="namespace" value="{{namespace}}">{{/namespace}}
        <button type="submit">Search</button>
        </form>
        {{#hasNamespaces}}
        <nav aria-label="Namespaces" class="namespaces">
        <h2>Namespaces</h2>
        <ul>
        <li><a href="/models">All</a></li>
        {{#namespaces}}<li><a href="{{href}}"{{#current}} aria-current="page"{{/current}}>{{name}}</a> ({{count}})</li>
        {{/namespaces}}
        </ul>
        </nav>
        {{/hasNamespaces}}
        <h2>{{heading}}</h2>
        {{#noModels}}<p>No model matches.</p>{{/noModels}}
        {{^noModels}}
        <div class="scroll"><table>
        <thead><tr><th scope="col">Model</th><th scope="col">Versions</th><th scope="col">Latest</th><th scope="col">Created</th></tr></thead>
        <tbody>
        {{#models}}<tr><td><a href="{{href}}">{{name}}</a></td><td>{{versions}}</td><td>{{latest}}</td><td>{{created}}</td></tr>
        {{/models}}
        </tbody>
        </table></div>
        {{/noModels}}
        {{> foot}}
        """

    static let model = """
        {{> head}}
        <p class="crumbs"><a href="/models">Models</a> / {{name}}</p>
        <h1>{{name}}</h1>
        <div class="scroll"><table>
        <caption>Versions, newest first</caption>
        <thead><tr><th scope="col">Version</th><th scope="col">Created</th><th scope="col">Publisher</th><th scope="col">Epsilon</th><th scope="col">Delta</th><th scope="col">Pruning ratio</th><th scope="col">Aliases</th><th scope="col">Verification</th></tr></thead>
        <tbody>
        {{#versions}}<tr><td><a href="{{href}}">{{version}}</a></td><td>{{created}}</td><td><code>{{publisher}}</code></td><td>{{epsilon}}</td><td>{{delta}}</td><td>{{pruningRatio}}</td><td>{{aliases}}</td><td>{{#verified}}<span class="badge ok">verified</span>{{/verified}}{{^verified}}<span class="badge bad">not verified</span> {{verification}}{{/verified}}</td></tr>
        {{/versions}}
        </tbody>
        </table></div>
        <nav aria-label="Pages" class="pages">{{#firstHref}}<a href="{{firstHref}}">Newest</a> {{/firstHref}}{{#nextHref}}<a href="{{nextHref}}" rel="next">Older versions</a>{{/nextHref}}</nav>
        {{#hasPolicies}}<section aria-labelledby="policies">
        <h2 id="policies">Alias policies</h2>
        <ul>{{#policies}}<li>{{.}}</li>{{/policies}}</ul>
        </section>{{/hasPolicies}}
        {{#mayPublish}}<form method="post" action="/alias" class="card">
        <h2>Point an alias at a version</h2>
        <input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="model" value="{{name}}">
        <p><label for="alias">Alias</label> <input id="alias" name="alias" required maxlength="64"></p>
        <p><label for="alias-version">Version</label> <input id="alias-version" name="version" required maxlength="128" list="page-versions" value="{{firstVersion}}">
        <datalist id="page-versions">{{#versions}}<option value="{{version}}"></option>{{/versions}}</datalist></p>
        <p><button type="submit">Set alias</button></p>
        </form>{{/mayPublish}}
        {{> foot}}
        """

    static let version = """
        {{> head}}
        <p class="crumbs"><a href="/models">Models</a> / <a href="{{modelHref}}">{{model}}</a> / {{version}}</p>
        <h1>{{model}}:{{version}}</h1>
        <section aria-labelledby="signature" class="card">
        <h2 id="signature">Signature and blobs</h2>
        {{#verified}}<p><span class="badge ok" id="status">verified</span> signed by {{signer}} (a trusted signer){{#blobCheck}}; every blob matched its signed SHA-256 at the last check{{/blobCheck}}.</p>{{/verified}}
        {{^verified}}<p><span class="badge bad" id="status">not verified</span> <span id="failure">{{failure}}</span></p>{{/verified}}
        <dl>
        <dt>Signed statement</dt><dd>{{#signatureOK}}<span class="badge ok" id="signature-status">verified now</span>{{/signatureOK}}{{^signatureOK}}<span class="badge bad" id="signature-status">not verified</span> {{signatureFailure}}{{/signatureOK}}</dd>
        <dt>Blobs</dt><dd>{{#blobCheck}}{{#ok}}<span class="badge ok" id="blob-status">matched</span>{{/ok}}{{^ok}}<span class="badge bad" id="blob-status">mismatch</span> <span id="blob-failure">{{failure}}</span>{{/ok}} at the last check, at {{at}} by {{by}}{{/blobCheck}}{{^blobCheck}}<span id="blob-status">not checked since this server started</span>{{/blobCheck}}</dd>
        </dl>
        <form method="post" action="/version/check">
        <input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="ref" value="{{ref}}">
        <p><button type="submit">Check the blobs now</button> <span class="hint">reads and hashes every sealed blob (a few checks a minute per principal)</span></p>
        </form>
        <dl>
        <dt>Statement digest</dt><dd><code>{{digest}}</code></dd>
        <dt>Publisher key</dt><dd><code>{{publisher}}</code></dd>
        <dt>Created</dt><dd>{{created}}</dd>
        {{#message}}<dt>Message</dt><dd>{{message}}</dd>{{/message}}
        {{#erased}}<dt>Erased</dt><dd>{{erased}}</dd>{{/erased}}
        </dl>
        </section>
        <section aria-labelledby="privacy" class="card">
        <h2 id="privacy">Privacy card (signed)</h2>
        <dl>
        {{#privacy}}<dt>{{label}}</dt><dd>{{value}}</dd>
        {{/privacy}}
        </dl>
        </section>
        <section aria-labelledby="files">
        <h2 id="files">Files</h2>
        <div class="scroll"><table>
        <thead><tr><th scope="col">Path</th><th scope="col">Size (bytes)</th><th scope="col">SHA-256 (plaintext)</th><th scope="col">Sealed size</th><th scope="col">SHA-256 (sealed blob)</th></tr></thead>
        <tbody>
        {{#files}}<tr><td>{{path}}</td><td>{{size}}</td><td><code>{{sha256}}</code></td><td>{{sealedSize}}</td><td><code>{{sealedSHA256}}</code></td></tr>
        {{/files}}
        </tbody>
        </table></div>
        </section>
        <section aria-labelledby="lineage" class="card">
        <h2 id="lineage">Lineage</h2>
        <figure class="figure lineage-figure columns-{{lineage.columns}}"><div class="scroll">
        <svg class="lineage" viewBox="0 0 {{lineage.width}} {{lineage.height}}" role="img" aria-labelledby="lineage-title" xmlns="http://www.w3.org/2000/svg">
        <title id="lineage-title">Lineage, oldest first: {{lineage.summary}}</title>
        <defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>
        {{#lineage.edges}}<line class="edge" x1="{{x1}}" y1="{{y1}}" x2="{{x2}}" y2="{{y2}}" marker-end="url(#arrow)"/>
        {{/lineage.edges}}
        {{#lineage.nodes}}<rect class="{{kind}}" x="{{x}}" y="{{y}}" width="{{width}}" height="{{height}}" rx="6"/><text class="label" x="{{textX}}" y="{{textY}}" text-anchor="middle">{{label}}</text>
        {{/lineage.nodes}}
        </svg>
        </div><figcaption class="hint swipe">Wider than the screen: scroll the graph sideways to see all of it.</figcaption></figure>
        <dl>
        <dt>Parent</dt><dd>{{#parentHref}}<a href="{{parentHref}}">{{parent}}</a>{{/parentHref}}{{^parentHref}}none{{/parentHref}}</dd>
        <dt>Dataset</dt><dd>{{dataset}}</dd>
        <dt>Dataset digest</dt><dd><code>{{datasetDigest}}</code></dd>
        <dt>Training configuration digest</dt><dd><code>{{trainingConfigDigest}}</code></dd>
        </dl>
        </section>
        <section aria-labelledby="labels" class="card">
        <h2 id="labels">Aliases and tags</h2>
        <dl>
        <dt>Aliases</dt><dd>{{aliases}}</dd>
        {{#tags}}<dt>{{key}}</dt><dd class="tag">{{value}}</dd>
        {{/tags}}
        </dl>
        </section>
        {{> foot}}
        """

    static let audit = """
        {{> head}}
        <h1>Audit log</h1>
        <section aria-labelledby="chain" class="card">
        <h2 id="chain">Hash chain</h2>
        {{#chainOK}}<p><span class="badge ok" id="chain-status">verified</span> {{chainSummary}}</p>{{/chainOK}}
        {{#chainVerifying}}<p><span class="badge" id="chain-status">verifying…</span> the server is walking the whole chain once (it started with the server); reload in a few seconds.</p>{{/chainVerifying}}
        {{#chainFailure}}<p><span class="badge bad" id="chain-status">broken</span> <span id="chain-failure">{{chainFailure}}</span></p>{{/chainFailure}}
        <dl>
        <dt>Last signed head</dt><dd>{{lastHead}}{{#chainOK}} (its signature checked by this load){{/chainOK}}</dd>
        <dt>Whole chain last walked</dt><dd>{{chainFullWalk}}</dd>
        </dl>
        <p class="hint">Each load walks the entries appended since the last one, looks up the entries the checkpoint, the signed heads and the ledger vouch for, and walks {{chainSlice}} entries of the verified prefix again, in turn; <code>coffer audit verify</code> walks the whole chain.</p>
        </section>
        <form method="get" action="/audit" class="filters">
        <p><label for="f-principal">Principal</label> <input id="f-principal" name="principal" value="{{filterPrincipal}}"></p>
        <p><label for="f-action">Action</label> <input id="f-action" name="action" value="{{filterAction}}"></p>
        <p><label for="f-model">Model or namespace/</label> <input id="f-model" name="model" value="{{filterModel}}"></p>
        <p><button type="submit">Filter</button></p>
        </form>
        {{#noEntries}}<p>No entry matches.</p>{{/noEntries}}
        {{^noEntries}}
        <div class="scroll"><table>
        <caption>Entries, newest first</caption>
        <thead><tr><th scope="col">#</th><th scope="col">Time (UTC)</th><th scope="col">Principal</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Outcome</th><th scope="col">Reason</th></tr></thead>
        <tbody>
        {{#entries}}<tr><td>{{seq}}</td><td>{{at}}</td><td>{{principal}}</td><td>{{action}}</td><td>{{target}}</td><td>{{outcome}}</td><td>{{reason}}</td></tr>
        {{/entries}}
        </tbody>
        </table></div>
        {{/noEntries}}
        <nav aria-label="Pages" class="pages">{{#firstHref}}<a href="{{firstHref}}">Newest</a> {{/firstHref}}{{#nextHref}}<a href="{{nextHref}}" rel="next">Older entries</a>{{/nextHref}}</nav>
        {{> foot}}
        """

    static let budgets = """
        {{> head}}
        <h1>Privacy budgets</h1>
        <p>{{scope}}</p>
        {{#noBudgets}}<p>No budget to show.</p>{{/noBudgets}}
        {{^noBudgets}}
        <div class="scroll"><table>
        <thead><tr><th scope="col">Dataset</th><th scope="col">Epsilon spent</th><th scope="col">Total epsilon</th><th scope="col">Remaining</th><th scope="col">Delta</th><th scope="col">Versions charged</th></tr></thead>
        <tbody>
        {{#budgets}}<tr><td><a href="{{href}}">{{dataset}}</a></td><td>{{spent}}</td><td>{{total}}</td><td>{{remaining}}</td><td>{{delta}}</td><td>{{charged}}</td></tr>
        {{/budgets}}
        </tbody>
        </table></div>
        {{/noBudgets}}
        {{> foot}}
        """

    static let budget = """
        {{> head}}
        <p class="crumbs"><a href="/budgets">Budgets</a> / {{dataset}}</p>
        <h1>Budget of {{dataset}}</h1>
        <section aria-labelledby="spend" class="card">
        <h2 id="spend">Spent against the total</h2>
        <p><strong id="spent">{{spent}}</strong> of epsilon {{total}} spent at delta {{delta}}; {{remaining}} remains.</p>
        <figure class="figure plot-figure"><div class="scroll">
        <svg class="plot" viewBox="0 0 {{plot.width}} {{plot.height}}" role="img" aria-labelledby="plot-title" xmlns="http://www.w3.org/2000/svg">
        <title id="plot-title">Composed epsilon after each charged version (line) against the budget of {{total}} (dashed)</title>
        <line class="axis" x1="{{plot.left}}" y1="{{plot.bottom}}" x2="{{plot.right}}" y2="{{plot.bottom}}"/>
        <line class="axis" x1="{{plot.left}}" y1="{{plot.top}}" x2="{{plot.left}}" y2="{{plot.bottom}}"/>
        <line class="budget-line" x1="{{plot.left}}" y1="{{plot.budgetY}}" x2="{{plot.right}}" y2="{{plot.budgetY}}"/>
        <text class="label" x="{{plot.right}}" y="{{plot.budgetLabelY}}" text-anchor="end">budget {{total}}</text>
        {{#plot.yTicks}}<text class="label" x="{{x}}" y="{{y}}" text-anchor="end">{{label}}</text>
        {{/plot.yTicks}}
        {{#plot.xTicks}}<text class="label" x="{{x}}" y="{{y}}" text-anchor="middle">{{label}}</text>
        {{/plot.xTicks}}
        <polyline class="spent-line" points="{{plot.points}}"/>
        {{#plot.dots}}<circle class="{{kind}}" cx="{{x}}" cy="{{y}}" r="4"><title>{{label}}</title></circle>
        {{/plot.dots}}
        </svg>
        </div><figcaption class="hint swipe">Wider than the screen: scroll the plot sideways to see all of it.</figcaption></figure>
        </section>
        <section aria-labelledby="charged">
        <h2 id="charged">Versions charged, in order</h2>
        {{#noCharges}}<p>No version is charged to this budget yet.</p>{{/noCharges}}
        {{^noCharges}}
        <div class="scroll"><table>
        <thead><tr><th scope="col">#</th><th scope="col">Version</th><th scope="col">Its own epsilon</th><th scope="col">Composed epsilon after it</th><th scope="col">Over the budget by the override of</th><th scope="col">Erased</th></tr></thead>
        <tbody>
        {{#charges}}<tr><td>{{index}}</td><td><a href="{{href}}">{{model}}:{{version}}</a></td><td>{{epsilon}}</td><td>{{composed}}</td><td>{{overrideBy}}</td><td>{{erased}}</td></tr>
        {{/charges}}
        </tbody>
        </table></div>
        {{/noCharges}}
        </section>
        {{> foot}}
        """

    static let sessions = """
        {{> head}}
        <h1>Inference sessions</h1>
        <p class="hint">{{scope}}</p>
        {{#noSessions}}<p>No session.</p>{{/noSessions}}
        {{^noSessions}}
        <div class="scroll"><table>
        <thead><tr><th scope="col">Session</th><th scope="col">Principal</th><th scope="col">Version</th><th scope="col">Opened</th><th scope="col">Expires</th><th scope="col">Uses</th><th scope="col">Status</th><th scope="col">Action</th></tr></thead>
        <tbody>
        {{#sessions}}<tr><td><code>{{id}}</code></td><td>{{principal}}</td><td><a href="{{href}}">{{model}}:{{version}}</a></td><td>{{created}}</td><td>{{expires}}</td><td>{{uses}}</td><td class="status">{{status}}</td><td>{{#revocable}}<form method="post" action="/sessions/revoke">
        <input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="id" value="{{id}}">
        <button type="submit" aria-label="Revoke session {{id}}">Revoke</button></form>{{/revocable}}</td></tr>
        {{/sessions}}
        </tbody>
        </table></div>
        {{/noSessions}}
        {{> foot}}
        """

    static let tokens = """
        {{> head}}
        <h1>Bearer tokens</h1>
        {{#noTokens}}<p>No token was minted.</p>{{/noTokens}}
        {{^noTokens}}
        <div class="scroll"><table>
        <thead><tr><th scope="col">Id</th><th scope="col">Principal</th><th scope="col">Scope</th><th scope="col">Created</th><th scope="col">Expires</th><th scope="col">Status</th><th scope="col">Action</th></tr></thead>
        <tbody>
        {{#tokens}}<tr><td><code>{{id}}</code></td><td>{{principal}}</td><td>{{scope}}</td><td>{{created}}</td><td>{{expires}}</td><td class="status">{{status}}</td><td>{{#revocable}}<form method="post" action="/tokens/revoke">
        <input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="id" value="{{id}}">
        <button type="submit" aria-label="Revoke token {{id}}">Revoke</button></form>{{/revocable}}</td></tr>
        {{/tokens}}
        </tbody>
        </table></div>
        {{/noTokens}}
        <form method="post" action="/tokens" class="card">
        <h2>Ask for a token</h2>
        <p class="hint">A token is minted with an admin's own signature, which this server never holds: the page shows the
        token once and a request, and the token opens nothing until an admin approves the request with
        <code>coffer approve</code>.</p>
        <input type="hidden" name="csrf" value="{{csrf}}">
        <p><label for="token-principal">Principal</label> <select id="token-principal" name="principal" required>{{#principals}}<option>{{.}}</option>{{/principals}}</select></p>
        <p><label for="token-scope">Scope</label> <select id="token-scope" name="scope" required>{{#scopes}}<option>{{.}}</option>{{/scopes}}</select></p>
        <p><label for="token-ttl">Lifetime (e.g. 12h, 30d)</label> <input id="token-ttl" name="ttl" required maxlength="16" value="30d"></p>
        <p><button type="submit">Request the token</button></p>
        </form>
        {{> foot}}
        """

    static let principals = """
        {{> head}}
        <h1>Principals and grants</h1>
        <div class="scroll"><table>
        <thead><tr><th scope="col">Principal</th><th scope="col">Key</th><th scope="col">Grants</th></tr></thead>
        <tbody>
        {{#principals}}<tr><td>{{name}}</td><td><code>{{keyID}}</code></td><td><ul class="grants">{{#grants}}<li>{{summary}} <form method="post" action="/grants/revoke" class="inline">
        <input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="principal" value="{{principal}}"><input type="hidden" name="role" value="{{role}}"><input type="hidden" name="scope" value="{{scope}}"><input type="hidden" name="alias" value="{{alias}}">
        <button type="submit" aria-label="Ask to revoke {{principal}}'s {{summary}}">Ask to revoke</button></form></li>{{/grants}}</ul></td></tr>
        {{/principals}}
        </tbody>
        </table></div>
        <form method="post" action="/grants" class="card">
        <h2>Ask for a grant</h2>
        <p class="hint">A grant is recorded with an admin's own signature, which this server never holds: the page shows a
        request, which an admin approves with <code>coffer approve</code>.</p>
        <input type="hidden" name="csrf" value="{{csrf}}">
        <p><label for="grant-principal">Principal</label> <select id="grant-principal" name="principal" required>{{#names}}<option>{{.}}</option>{{/names}}</select></p>
        <p><label for="grant-role">Role</label> <select id="grant-role" name="role" required>{{#roles}}<option>{{.}}</option>{{/roles}}</select></p>
        <p><label for="grant-scope">Scope (* for every model, NS/ for a namespace, or a model)</label> <input id="grant-scope" name="scope" required maxlength="200" value="*"></p>
        <p><label for="grant-alias">Only through the alias (inference, optional)</label> <input id="grant-alias" name="alias" maxlength="64"></p>
        <p><label for="grant-seconds">Longest session in seconds (inference, optional)</label> <input id="grant-seconds" name="max_session_seconds" inputmode="numeric" maxlength="9"></p>
        <p><label for="grant-predictions">Predictions in all (inference, optional)</label> <input id="grant-predictions" name="max_predictions" inputmode="numeric" maxlength="10"></p>
        <p><button type="submit">Request the grant</button></p>
        </form>
        {{> foot}}
        """

    static let request = """
        {{> head}}
        <h1>Change requested</h1>
        <p>Asked: <strong>{{summary}}</strong>.</p>
        {{#hasToken}}<section aria-labelledby="token" class="card">
        <h2 id="token">The token, shown once</h2>
        <p><code class="secret"><!--secret--></code></p>
        <p class="hint">Copy it now: the registry keeps only its hash. It opens nothing until the request below is approved.</p>
        </section>{{/hasToken}}
        <section aria-labelledby="approve" class="card">
        <h2 id="approve">Approval</h2>
        <p>An admin approves it with their own key, before {{expires}}:</p>
        <pre><code>{{command}} --identity ADMIN.key</code></pre>
        <p class="hint">The command shows what the request asks and asks before it unlocks the key: approve what it shows,
        not what this page says. <code>--show</code> prints it and signs nothing.</p>
        </section>
        {{> foot}}
        """

    static let error = """
        {{> head}}
        <h1>{{title}}</h1>
        <p class="alert" role="alert">{{message}}</p>
        <p><a href="/models">Back to the models</a></p>
        {{> foot}}
        """
}
