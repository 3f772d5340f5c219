/// What a multi-task network looks like: a shared MLP trunk and one dense head per task.
public struct Architecture: Sendable, Equatable, Codable {
    public enum Activation: String, Sendable, Codable {
        case relu, gelu
    }

    public var inputs: Int
    /// Widths of the trunk's hidden layers, e.g. `[256, 256]`.
    public var trunk: [Int]
    public var activation: Activation
    public var tasks: [TaskSpec]

    public init(inputs: Int, trunk: [Int], activation: Activation = .relu, tasks: [TaskSpec]) {
        self.inputs = inputs
        self.trunk = trunk
        self.activation = activation
        self.tasks = tasks
    }

    public func validate() throws(CofferTrainingError) {
        guard inputs > 0 else { throw .invalidParameter("inputs must be > 0") }
        guard trunk.allSatisfy({ $0 > 0 }) else { throw .invalidParameter("trunk widths must be > 0, got \(trunk)") }
        guard !tasks.isEmpty else { throw .invalidParameter("at least one task is required") }
        var names = Set<String>()
        for task in tasks {
            guard names.insert(task.name).inserted else { throw .invalidParameter("task name '\(task.name)' is used twice") }
            if task.kind == .classification {
                guard task.classes >= 2 else { throw .invalidParameter("task '\(task.name)': a classification needs >= 2 classes") }
            }
            guard task.weight >= 0, task.weight.isFinite else { throw .invalidParameter("task '\(task.name)': loss weight must be >= 0") }
        }
    }
}

/// One task: its name, kind, output width and loss weight.
public struct TaskSpec: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// Softmax cross-entropy over `classes` outputs; targets are class indices.
        case classification
        /// Sigmoid binary cross-entropy on one output; targets are 0 or 1.
        case binary
        /// Squared error on one output.
        case regression
    }

    public var name: String
    public var kind: Kind
    /// Number of classes (classification only).
    public var classes: Int
    public var weight: Float

    public init(name: String, kind: Kind, classes: Int = 0, weight: Float = 1) {
        self.name = name
        self.kind = kind
        self.classes = classes
        self.weight = weight
    }

    /// Width of the task's head.
    public var outputs: Int { kind == .classification ? classes : 1 }
}
