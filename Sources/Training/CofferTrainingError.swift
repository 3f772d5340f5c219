/// What the training module refuses, each with a one-line message naming the field, column or row.
public enum CofferTrainingError: Error, Equatable, CustomStringConvertible {
    case invalidParameter(String)
    case unreachableEpsilon(String)
    case invalidCheckpoint(String)
    case invalidData(String)
    case invalidConfiguration(String)

    public var description: String {
        switch self {
        case .invalidParameter(let why): "invalid parameter: \(why)"
        case .unreachableEpsilon(let why): "target unreachable: \(why)"
        case .invalidCheckpoint(let why): "invalid safetensors checkpoint: \(why)"
        case .invalidData(let why): "invalid data: \(why)"
        case .invalidConfiguration(let why): "invalid training configuration: \(why)"
        }
    }
}

/// Checks of DP-SGD parameters shared by the accountant and the trainer.
public enum PrivacyParameters {
    public static func validate(sampleRate: Double, noiseMultiplier: Double, steps: Int, delta: Double) throws(CofferTrainingError) {
        guard sampleRate > 0, sampleRate <= 1 else { throw .invalidParameter("sample rate must be in (0, 1], got \(sampleRate)") }
        guard noiseMultiplier > 0, noiseMultiplier.isFinite else {
            throw .invalidParameter("noise multiplier must be > 0 with DP on, got \(noiseMultiplier)")
        }
        guard steps >= 0 else { throw .invalidParameter("steps must be >= 0, got \(steps)") }
        guard delta > 0, delta < 1 else { throw .invalidParameter("delta must be in (0, 1), got \(delta)") }
    }
}
