import CofferTestSupport
import Testing

@testable import CofferTraining

/// The Swift SIMD kernels compute what OpenBLAS computes, on sizes with and without an 8-lane tail; a forward product
/// with fewer rows than ``MatrixKernels/matrixVectorRows`` runs on the SIMD loop on either backend, and is checked
/// against a plain loop.
@Suite(.ownThread)
struct MatrixKernelTests {
    @Test(arguments: [(3, 5, 7), (4, 5, 7), (16, 8, 24), (9, 17, 33), (1, 1, 1)])
    func simdAgreesWithBLAS(m: Int, n: Int, k: Int) {
        var g = SeededGenerator(seed: UInt64(m * 1000 + n * 10 + k))
        func matrix(_ count: Int) -> [Float] { (0..<count).map { _ in g.uniform(-1, 1) } }
        let a = matrix(m * k)
        let bT = matrix(n * k)
        let b = matrix(k * n)
        let aT = matrix(k * m)
        var blas = [Float](repeating: 0.5, count: m * n)
        var simd = blas
        MatrixKernels.multiplyTransposed(a, bT, into: &blas, m: m, n: n, k: k, backend: .blas)
        MatrixKernels.multiplyTransposed(a, bT, into: &simd, m: m, n: n, k: k, backend: .simd)
        #expect(zip(blas, simd).allSatisfy { abs($0 - $1) < 1e-4 })
        var plain = [Float](repeating: 0.5, count: m * n)
        for i in 0..<m { for j in 0..<n { for p in 0..<k { plain[i * n + j] += a[i * k + p] * bT[j * k + p] } } }
        #expect(zip(blas, plain).allSatisfy { abs($0 - $1) < 1e-4 })
        // multiply adds to what c holds (the heads' input gradients are summed that way): checked against a plain loop.
        var expected = blas
        for i in 0..<m { for j in 0..<n { for p in 0..<k { expected[i * n + j] += a[i * k + p] * b[p * n + j] } } }
        MatrixKernels.multiply(a, b, into: &blas, m: m, n: n, k: k, backend: .blas)
        MatrixKernels.multiply(a, b, into: &simd, m: m, n: n, k: k, backend: .simd)
        #expect(zip(blas, expected).allSatisfy { abs($0 - $1) < 1e-4 })
        #expect(zip(blas, simd).allSatisfy { abs($0 - $1) < 1e-4 })
        MatrixKernels.multiplyFirstTransposed(aT, b, into: &blas, m: m, n: n, k: k, backend: .blas)
        MatrixKernels.multiplyFirstTransposed(aT, b, into: &simd, m: m, n: n, k: k, backend: .simd)
        #expect(zip(blas, simd).allSatisfy { abs($0 - $1) < 1e-4 })
    }
}
