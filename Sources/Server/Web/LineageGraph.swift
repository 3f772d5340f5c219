import Foundation

/// A version's lineage drawn as a graph on the server (SVG, docs/WEB.md): the chain of parents from the oldest at the
/// top to this version at the bottom, each with the dataset it was trained on (left) and the digest of its training
/// configuration (right). Labels are text nodes, escaped by the template.
///
/// A column no node fills is left out: the graph is only as wide as what it shows, since it is drawn at its natural
/// size and a phone scrolls what does not fit (docs/WEB.md, "On a phone"). A version with neither dataset nor
/// configuration stated is one box wide, and fits.
struct LineageGraph {
    struct Node {
        let model: String
        let version: String
        let dataset: String?
        let configuration: String?
    }

    static let margin = 10.0
    static let boxWidth = 200.0
    /// From one column's left edge to the next one's: a box and the room for an arrow.
    static let column = 250.0
    static let boxHeight = 36.0
    static let row = 64.0

    /// Oldest first; the last is the version shown.
    let chain: [Node]
    /// The oldest parent shown, by name only, when the principal may not read its model: its name is in its child's
    /// signed statement (which `GET /v1/version` of the child shows too); its dataset, configuration and own parents
    /// are not.
    let hiddenParent: String?

    var hiddenParents: Bool { hiddenParent != nil }

    var height: Double { 16 + Double(chain.count) * Self.row + (hiddenParents ? Self.row : 0) }

    /// The left edge of each column drawn; nil for a column no node fills.
    var columns: (dataset: Double?, version: Double, configuration: Double?) {
        let dataset = chain.contains { $0.dataset != nil } ? Self.margin : nil
        let version = Self.margin + (dataset == nil ? 0 : Self.column)
        return (dataset, version, chain.contains { $0.configuration != nil } ? version + Self.column : nil)
    }

    /// The columns drawn, 1 to 3 (the stylesheet's `columns-N` class sets the width the graph is drawn at).
    var columnCount: Int { 1 + (columns.dataset == nil ? 0 : 1) + (columns.configuration == nil ? 0 : 1) }

    var width: Double { 2 * Self.margin + Self.boxWidth + Double(columnCount - 1) * Self.column }

    var values: [String: Any] {
        var nodes: [[String: Any]] = []
        var edges: [[String: Any]] = []
        let offset = hiddenParents ? 1 : 0
        func box(_ kind: String, _ x: Double, _ row: Int, _ label: String) {
            let y = 16 + Double(row) * Self.row
            nodes.append([
                "kind": kind, "x": Self.format(x), "y": Self.format(y), "width": Self.format(Self.boxWidth), "height": Self.format(Self.boxHeight),
                "textX": Self.format(x + Self.boxWidth / 2), "textY": Self.format(y + 23), "label": Self.fit(label),
            ])
        }
        func edge(from: (x: Double, row: Int), to: (x: Double, row: Int), vertical: Bool) {
            let y1 = 16 + Double(from.row) * Self.row + (vertical ? Self.boxHeight : Self.boxHeight / 2)
            let y2 = 16 + Double(to.row) * Self.row + (vertical ? 0 : Self.boxHeight / 2)
            edges.append(["x1": Self.format(from.x), "y1": Self.format(y1), "x2": Self.format(to.x), "y2": Self.format(y2)])
        }
        let columns = self.columns
        let center = columns.version + Self.boxWidth / 2
        if let hiddenParent {
            box("hidden", columns.version, 0, "\(hiddenParent) (no access)")
            edge(from: (center, 0), to: (center, 1), vertical: true)
        }
        for (index, node) in chain.enumerated() {
            let row = index + offset
            box(index == chain.count - 1 ? "current" : "version", columns.version, row, "\(node.model):\(node.version)")
            if index > 0 { edge(from: (center, row - 1), to: (center, row), vertical: true) }
            if let dataset = node.dataset, let x = columns.dataset {
                box("dataset", x, row, "dataset \(dataset)")
                edge(from: (x + Self.boxWidth, row), to: (columns.version, row), vertical: false)
            }
            if let configuration = node.configuration, let x = columns.configuration {
                box("configuration", x, row, "config \(configuration.prefix(12))")
                edge(from: (x, row), to: (columns.version + Self.boxWidth, row), vertical: false)
            }
        }
        let summary = chain.map { "\($0.model):\($0.version)" }.joined(separator: ", then ")
        return [
            "width": Self.format(width), "height": Self.format(height), "columns": columnCount, "nodes": nodes, "edges": edges,
            "summary": (hiddenParent.map { "\($0), whose details you may not read, then " } ?? "") + summary,
        ]
    }

    /// A label that fits its box (about 26 characters of 12 px text).
    static func fit(_ label: String) -> String { label.count <= 26 ? label : String(label.prefix(25)) + "…" }

    static func format(_ value: Double) -> String { String(format: "%.1f", value) }
}
