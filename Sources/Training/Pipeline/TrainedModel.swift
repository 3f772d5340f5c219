/// A validation metric of one task.
public struct TaskMetric: Sendable, Equatable, Codable {
    public var task: String
    public var metric: String
    public var value: Double

    public init(task: String, metric: String, value: Double) {
        self.task = task
        self.metric = metric
        self.value = value
    }
}

/// What `coffer train` produces.
/// How the tasks' losses were weighted, and the effective weights at the end of training.
public struct TaskBalancing: Sendable, Equatable, Codable {
    public var method: String
    public var weights: [String: Double]

    public init(method: String, weights: [String: Double]) {
        self.method = method
        self.weights = weights
    }
}

public struct TrainedModel: Sendable {
    public var model: MultiTaskModel
    public var balancing: TaskBalancing
    public var preprocessing: Preprocessing
    public var privacy: PrivacyReport
    public var metrics: [TaskMetric]
    /// Wall time of the training steps alone (no data loading or evaluation), and the examples they processed.
    public var trainingSeconds: Double
    public var examplesProcessed: Int
    /// The audit's canaries, inclusion bits and scores (`coffer train --audit-report`); never written into the checkpoint.
    public var audit: AuditRecord?
    /// Wall time of the audit: scoring the canaries after each epoch, and the bound.
    public var auditSeconds: Double?

    /// Assembled by `TrainingRun`, or elsewhere (a federation's global model) for ``Checkpoint/encode(_:)``.
    public init(
        model: MultiTaskModel,
        balancing: TaskBalancing,
        preprocessing: Preprocessing,
        privacy: PrivacyReport,
        metrics: [TaskMetric],
        trainingSeconds: Double,
        examplesProcessed: Int,
        audit: AuditRecord? = nil,
        auditSeconds: Double? = nil
    ) {
        self.model = model
        self.balancing = balancing
        self.preprocessing = preprocessing
        self.privacy = privacy
        self.metrics = metrics
        self.trainingSeconds = trainingSeconds
        self.examplesProcessed = examplesProcessed
        self.audit = audit
        self.auditSeconds = auditSeconds
    }
}
