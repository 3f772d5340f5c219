import CBLAS
import Foundation

/// The three matrix products of a dense layer, on OpenBLAS (the default) or on hand-written Swift SIMD.
///
/// Both exist so that the choice is measured, not assumed: `COFFER_MATMUL=simd` selects the Swift kernels,
/// and `tools/bench/training --compare-kernels` runs the same training with each (README, "Performance").
enum MatrixKernels {
    enum Backend: String { case blas, simd }

    static let backend = Backend(rawValue: ProcessInfo.processInfo.environment["COFFER_MATMUL"] ?? "") ?? .blas

    /// `c[m x n] += a[m x k] * b[n x k]^T` (row-major): a dense layer's forward pass.
    static func multiplyTransposed(_ a: [Float], _ b: [Float], into c: inout [Float], m: Int, n: Int, k: Int, backend: Backend = backend) {
        guard m > 0, n > 0, k > 0 else { return }
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                c.withUnsafeMutableBufferPointer { c in
                    multiplyTransposed(a.baseAddress!, b.baseAddress!, into: c.baseAddress!, m: m, n: n, k: k, backend: backend)
                }
            }
        }
    }

    /// Below this many rows of `a`, ``multiplyTransposed(_:_:into:m:n:k:backend:)-(UnsafePointer<Float>,_,_,_,_,_,_)``
    /// takes each row's dot products with `b` on the Swift SIMD loop, whatever the backend, reading `b` once a row:
    /// OpenBLAS 0.3.21's sgemm first packs all of `b` (gemv forwarding came in 0.3.27; one row through two 5000 x 5000
    /// layers, the session benchmark's 100 MB model, took 80 ms with sgemm and 16 ms with sgemv), and its sgemv, like
    /// any first OpenBLAS call, loads OpenBLAS, whose workers then spin in sched_yield on the other cores for about
    /// 0.1 s. `coffer infer` of one row on that model, sgemv against this loop (release builds, 31 alternated rounds): CPU
    /// 190 -> 174 ms (0.918x per round), wall 0.977x; a server's prediction no longer leaves a spinning core behind.
    static let matrixVectorRows = 4

    /// The same over memory the caller holds: the weights of a checkpoint read in place (``CheckpointView``). The
    /// plaintext checkpoint (`coffer predict`) and the one in locked memory (`infer`, a server's session) go through
    /// this one function, so that they give the same floats.
    static func multiplyTransposed(
        _ a: UnsafePointer<Float>,
        _ b: UnsafePointer<Float>,
        into c: UnsafeMutablePointer<Float>,
        m: Int,
        n: Int,
        k: Int,
        backend: Backend = backend
    ) {
        guard m > 0, n > 0, k > 0 else { return }
        switch backend {
        case .blas where m >= matrixVectorRows:
            coffer_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1, a, Int32(k), b, Int32(k), 1, c, Int32(n))
        case .blas, .simd:
            for i in 0..<m { for j in 0..<n { c[i * n + j] += dot(a + i * k, b + j * k, k) } }
        }
    }

    /// `c[m x n] += a[m x k] * b[k x n]` (row-major): a dense layer's input gradient.
    static func multiply(_ a: [Float], _ b: [Float], into c: inout [Float], m: Int, n: Int, k: Int, backend: Backend = backend) {
        guard m > 0, n > 0 else { return }
        switch backend {
        case .blas:
            coffer_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), 1, a, Int32(k), b, Int32(n), 1, &c, Int32(n))
        case .simd:
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    c.withUnsafeMutableBufferPointer { c in
                        for i in 0..<m {
                            for p in 0..<k where a[i * k + p] != 0 { axpy(a[i * k + p], b.baseAddress! + p * n, c.baseAddress! + i * n, n) }
                        }
                    }
                }
            }
        }
    }

    /// `c[m x n] = a[k x m]^T * b[k x n]` (row-major): a dense layer's weight gradient summed over examples.
    static func multiplyFirstTransposed(_ a: [Float], _ b: [Float], into c: inout [Float], m: Int, n: Int, k: Int, backend: Backend = backend) {
        guard m > 0, n > 0, k > 0 else { return }
        switch backend {
        case .blas:
            coffer_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), 1, a, Int32(m), b, Int32(n), 0, &c, Int32(n))
        case .simd:
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    c.withUnsafeMutableBufferPointer { c in
                        for i in 0..<(m * n) { c[i] = 0 }
                        for p in 0..<k {
                            for i in 0..<m where a[p * m + i] != 0 { axpy(a[p * m + i], b.baseAddress! + p * n, c.baseAddress! + i * n, n) }
                        }
                    }
                }
            }
        }
    }

    /// Dot product of two length-`count` vectors, eight lanes at a time. A multiply and an add, not `addProduct`: on the
    /// baseline x86-64 target (no FMA) a fused multiply-add is a call to libm's `fmaf` per lane.
    @inline(__always)
    static func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ count: Int) -> Float {
        var sum = SIMD8<Float>(repeating: 0)
        var i = 0
        while i + 8 <= count {
            let u = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            let v = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
            sum += u * v
            i += 8
        }
        var total = sum.sum()
        while i < count {
            total += x[i] * y[i]
            i += 1
        }
        return total
    }

    /// `y += alpha * x` over `count` floats, eight lanes at a time.
    @inline(__always)
    static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int) {
        let a = SIMD8<Float>(repeating: alpha)
        var i = 0
        while i + 8 <= count {
            var v = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
            v += a * UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(y + i).storeBytes(of: v, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count {
            y[i] += alpha * x[i]
            i += 1
        }
    }
}
