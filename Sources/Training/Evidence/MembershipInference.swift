/// Membership-inference attacks on a trained model, per task: who was in the training data, judged from the model's
/// loss on each row.
///
/// - `loss`: the loss-threshold attack (Yeom, Giacomelli, Fredrikson, Jha 2018): a lower loss means "member". Its AUC
///   and its TPR at 1% FPR are read off the ROC curve over every threshold, thresholds chosen with the labels: the
///   best any single loss threshold does on these rows.
/// - `population`: the reference-model-free population attack (Ye, Maddi, Murakonda, Bindschaedler, Shokri 2022,
///   "attack P"): the threshold for a false-positive rate α is the α-quantile of the model's losses on population data,
///   rows from the same distribution that were not trained on and are not among the evaluated non-members. Its TPR at
///   1% FPR is measured at the threshold of α = 1%, with the false-positive rate it really had on the non-members; its
///   AUC is the area under the curve of those measured rates as α sweeps the population's quantiles.
public enum MembershipInference {
    /// The false-positive rate at which the true-positive rate is reported.
    public static let reportedFPR = 0.01

    /// Both attacks on each task of `model`.
    ///
    /// - Parameters:
    ///   - members: rows that were in the training data.
    ///   - nonMembers: rows that were not (and are not in `population`).
    ///   - population: rows from the data's distribution, not trained on, that set the population attack's thresholds.
    /// - Throws: ``CofferTrainingError/invalidData(_:)`` when a set is empty.
    public static func attack(
        model: MultiTaskModel,
        members: Dataset,
        nonMembers: Dataset,
        population: Dataset
    ) throws(CofferTrainingError)
        -> Evidence.Membership
    {
        guard members.count > 0 else { throw .invalidData("membership inference needs at least one member row") }
        guard nonMembers.count > 0 else { throw .invalidData("membership inference needs at least one non-member row") }
        guard population.count > 0 else { throw .invalidData("the population attack needs at least one population row") }
        let memberLosses = exampleLosses(model, members)
        let nonMemberLosses = exampleLosses(model, nonMembers)
        let populationLosses = exampleLosses(model, population)
        var tasks: [String: Evidence.Membership.TaskAttacks] = [:]
        for (t, task) in model.architecture.tasks.enumerated() {
            let loss = lossAttack(members: memberLosses[t], nonMembers: nonMemberLosses[t])
            let population = populationAttack(members: memberLosses[t], nonMembers: nonMemberLosses[t], population: populationLosses[t])
            tasks[task.name] = .init(loss: loss, population: population)
        }
        let all = tasks.values.flatMap { [$0.loss, $0.population] }
        return Evidence.Membership(
            members: members.count,
            nonMembers: nonMembers.count,
            population: population.count,
            maxAUC: all.map(\.auc).max() ?? 0.5,
            maxTPRAt1PctFPR: all.map(\.tprAt1PctFPR).max() ?? 0,
            tasks: tasks
        )
    }

    /// Each task's per-example (unweighted) loss on `data`: cross-entropy, logistic loss, or squared error.
    static func exampleLosses(_ model: MultiTaskModel, _ data: Dataset) -> [[Float]] {
        // Row blocks keep the trace's memory small on large files.
        var losses = [[Float]](repeating: [], count: model.architecture.tasks.count)
        var start = 0
        while start < data.count {
            let end = min(start + 4096, data.count)
            let block = data.subset(Array(start..<end))
            let pass = model.backward(block.features, count: block.count, targets: block.targets, logVariances: nil)
            for t in losses.indices { losses[t] += pass.exampleLosses[t] }
            start = end
        }
        return losses
    }

    /// The loss-threshold attack: score `-loss`, ROC over every threshold.
    static func lossAttack(members: [Float], nonMembers: [Float]) -> Evidence.Membership.AttackScore {
        let scores = (members + nonMembers).map { -$0 }
        let labels = members.map { _ in Float(1) } + nonMembers.map { _ in Float(0) }
        return .init(auc: TrainingRun.auc(scores: scores, labels: labels), tprAt1PctFPR: tprAtFPR(members: members, nonMembers: nonMembers), fpr: nil)
    }

    /// The largest fraction of members whose loss is below a threshold that at most `reportedFPR` of the non-members
    /// fall below (strictly), the threshold being any value.
    static func tprAtFPR(members: [Float], nonMembers: [Float], fpr: Double = reportedFPR) -> Double {
        let sorted = nonMembers.sorted()
        let allowed = Int((fpr * Double(sorted.count)).rounded(.down))
        // "member iff loss < threshold" with threshold = the (allowed+1)-th smallest non-member loss lets at most
        // `allowed` non-members through; any higher threshold lets more.
        let threshold = sorted[allowed]
        return Double(members.filter { $0 < threshold }.count) / Double(members.count)
    }

    /// The population attack: thresholds at the population's loss quantiles, rates measured on the evaluated rows.
    static func populationAttack(members: [Float], nonMembers: [Float], population: [Float]) -> Evidence.Membership.AttackScore {
        let sortedPopulation = population.sorted()
        let sortedMembers = members.sorted()
        let sortedNonMembers = nonMembers.sorted()
        /// The fraction of `sorted` strictly below `threshold`.
        func below(_ sorted: [Float], _ threshold: Float) -> Double {
            var low = 0
            var high = sorted.count
            while low < high {
                let middle = (low + high) / 2
                if sorted[middle] < threshold { low = middle + 1 } else { high = middle }
            }
            return Double(low) / Double(sorted.count)
        }
        // Threshold j (0...count): "member iff loss < the j-th smallest population loss" (+∞ for j = count) flags a
        // fraction j / count of the population, at most; rates on the evaluated rows are what it really does.
        var points: [(fpr: Double, tpr: Double)] = [(0, 0)]
        for j in 0...sortedPopulation.count {
            let threshold = j < sortedPopulation.count ? sortedPopulation[j] : Float.infinity
            points.append((below(sortedNonMembers, threshold), below(sortedMembers, threshold)))
        }
        points.append((1, 1))
        // The quantile thresholds rise with j, so both rates rise too: the trapezoids need no sorting.
        var auc = 0.0
        for k in 1..<points.count { auc += (points[k].fpr - points[k - 1].fpr) * (points[k].tpr + points[k - 1].tpr) / 2 }
        let j = Int((reportedFPR * Double(sortedPopulation.count)).rounded(.down))
        let threshold = sortedPopulation[j]
        return .init(auc: auc, tprAt1PctFPR: below(sortedMembers, threshold), fpr: below(sortedNonMembers, threshold))
    }
}

// MARK: - A checkpoint against a members file

extension MembershipInference {
    /// Both attacks on a checkpoint's model, from a CSV of its feature and task columns plus `member` (1: the row was
    /// trained on, 0: it was not).
    ///
    /// The population attack's population is `population` when given; otherwise every other non-member row of the file
    /// (the 1st, 3rd, 5th... in file order), the rest being the evaluated non-members.
    ///
    /// - Throws: ``CofferTrainingError/invalidData(_:)`` naming the file when it lacks one of the checkpoint's feature
    ///   or task columns, when `member` is missing or not 0/1, or when it has no members or fewer than two non-members.
    public static func attack(
        model: MultiTaskModel,
        preprocessing: Preprocessing,
        members table: CSVTable,
        source: String,
        population: (table: CSVTable, source: String)? = nil
    ) throws(CofferTrainingError) -> Evidence.Membership {
        let data = try matching(table, source: source, model: model, preprocessing: preprocessing)
        guard let column = table.columns.firstIndex(of: "member") else {
            throw .invalidData("\(source): no 'member' column (1 for rows trained on, 0 for the others)")
        }
        var memberRows: [Int] = []
        var nonMemberRows: [Int] = []
        for row in 0..<table.rowCount {
            switch table.value(row: row, column: column) {
            case 1: memberRows.append(row)
            case 0: nonMemberRows.append(row)
            case let value: throw .invalidData("\(source) row \(row + 2), column 'member': \(value) is not 0 or 1")
            }
        }
        guard !memberRows.isEmpty else { throw .invalidData("\(source): no member rows (member = 1)") }
        let populationData: Dataset
        let evaluated: [Int]
        if let population {
            populationData = try matching(population.table, source: population.source, model: model, preprocessing: preprocessing)
            evaluated = nonMemberRows
        } else {
            populationData = data.subset(nonMemberRows.enumerated().filter { $0.offset % 2 == 0 }.map(\.element))
            evaluated = nonMemberRows.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
        }
        guard !evaluated.isEmpty, populationData.count > 0 else {
            throw .invalidData(
                "\(source): \(nonMemberRows.count) non-member rows (member = 0); the attacks need at least 2, or 1 and a population file"
            )
        }
        return try attack(model: model, members: data.subset(memberRows), nonMembers: data.subset(evaluated), population: populationData)
    }

    /// The labelled rows of `table`, refusing one that does not carry the checkpoint's feature and task columns.
    static func matching(
        _ table: CSVTable,
        source: String,
        model: MultiTaskModel,
        preprocessing: Preprocessing
    ) throws(CofferTrainingError)
        -> Dataset
    {
        for name in preprocessing.features where !table.columns.contains(name) {
            throw .invalidData(
                "\(source) does not match the checkpoint's features: column '\(name)' is missing (the checkpoint's features: \(preprocessing.features.joined(separator: ", ")))"
            )
        }
        for task in preprocessing.tasks {
            for name in (task.oneHot ?? []) + [task.column].compactMap({ $0 }) where !table.columns.contains(name) {
                throw .invalidData("\(source) lacks column '\(name)' of task '\(task.name)': the attacks need every task's target")
            }
        }
        return try TrainingRun.labelled(table, model: model, preprocessing: preprocessing)
    }
}
