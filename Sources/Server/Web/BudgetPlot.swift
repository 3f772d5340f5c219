import Foundation

/// The geometry of a budget's plot, drawn on the server as SVG (docs/WEB.md): the composed epsilon after each charged
/// version as a line from 0, and the budget's total as a dashed line. Only numbers and fixed labels reach the SVG.
struct BudgetPlot {
    static let width = 640.0
    static let height = 300.0
    static let left = 56.0
    static let right = width - 16
    static let top = 16.0
    static let bottom = height - 36

    let total: Double
    /// The composed epsilon after each charge, in order.
    let history: [Double]

    /// The highest epsilon the y axis shows: the budget or the highest point, with room above.
    var ceiling: Double { max(total, history.max() ?? 0, 1e-9) * 1.1 }

    func x(_ index: Int) -> Double {
        Self.left + (Self.right - Self.left) * Double(index) / Double(max(history.count, 1))
    }

    func y(_ epsilon: Double) -> Double { Self.bottom - (Self.bottom - Self.top) * epsilon / ceiling }

    /// The values the `budget` template reads under `plot`.
    var values: [String: Any] {
        let points = [(x(0), y(0))] + history.enumerated().map { (x($0.offset + 1), y($0.element)) }
        let step = max(1, history.count / 10)
        let xTicks: [[String: Any]] = stride(from: step, through: history.count, by: step).map {
            ["x": Self.format(x($0)), "y": Self.format(Self.bottom + 18), "label": "\($0)"]
        }
        let yTicks: [[String: Any]] = [0, 0.5, 1].map { fraction in
            let epsilon = ceiling / 1.1 * fraction
            return ["x": Self.format(Self.left - 6), "y": Self.format(y(epsilon) + 4), "label": String(format: "%.3g", epsilon)]
        }
        let dots: [[String: Any]] = history.enumerated().map { index, epsilon in
            [
                "x": Self.format(x(index + 1)), "y": Self.format(y(epsilon)), "kind": epsilon > total ? "over" : "within",
                "label": "after version \(index + 1): epsilon \(String(format: "%.4g", epsilon))",
            ]
        }
        return [
            "width": Self.format(Self.width), "height": Self.format(Self.height), "left": Self.format(Self.left),
            "right": Self.format(Self.right), "top": Self.format(Self.top), "bottom": Self.format(Self.bottom),
            "budgetY": Self.format(y(total)), "budgetLabelY": Self.format(y(total) - 6),
            "points": points.map { "\(Self.format($0.0)),\(Self.format($0.1))" }.joined(separator: " "),
            "xTicks": xTicks, "yTicks": yTicks, "dots": dots,
        ]
    }

    static func format(_ value: Double) -> String { String(format: "%.1f", value) }
}
