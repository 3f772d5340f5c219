#if canImport(Glibc)
import Glibc
#endif

/// In-place iterative radix-2 FFT over split real and imaginary parts, for the PLD accountant's convolutions.
struct FFT {
    let count: Int
    private let cosines: [Double]
    private let sines: [Double]

    /// `count` must be a power of two.
    init(count: Int) {
        precondition(count > 0 && count & (count - 1) == 0, "FFT length must be a power of two")
        self.count = count
        let half = max(count / 2, 1)
        cosines = (0..<half).map { cos(2 * Double.pi * Double($0) / Double(count)) }
        sines = (0..<half).map { sin(2 * Double.pi * Double($0) / Double(count)) }
    }

    static func length(atLeast n: Int) -> Int {
        var length = 1
        while length < n { length <<= 1 }
        return length
    }

    /// Forward transform (e^{-2πi jk/n}); `inverse` uses e^{+2πi jk/n} and divides by n.
    func transform(real: inout [Double], imaginary: inout [Double], inverse: Bool = false) {
        precondition(real.count == count && imaginary.count == count)
        let n = count
        real.withUnsafeMutableBufferPointer { re in
            imaginary.withUnsafeMutableBufferPointer { im in
                cosines.withUnsafeBufferPointer { cosTable in
                    sines.withUnsafeBufferPointer { sinTable in
                        var j = 0
                        for i in 1..<max(n, 1) {
                            var bit = n >> 1
                            while j & bit != 0 {
                                j ^= bit
                                bit >>= 1
                            }
                            j |= bit
                            if i < j {
                                re.swapAt(i, j)
                                im.swapAt(i, j)
                            }
                        }
                        let sign: Double = inverse ? 1 : -1
                        var size = 2
                        while size <= n {
                            let halfSize = size / 2
                            let stride = n / size
                            var start = 0
                            while start < n {
                                for k in 0..<halfSize {
                                    let wr = cosTable[k * stride]
                                    let wi = sign * sinTable[k * stride]
                                    let a = start + k
                                    let b = a + halfSize
                                    let tr = re[b] * wr - im[b] * wi
                                    let ti = re[b] * wi + im[b] * wr
                                    re[b] = re[a] - tr
                                    im[b] = im[a] - ti
                                    re[a] += tr
                                    im[a] += ti
                                }
                                start += size
                            }
                            size <<= 1
                        }
                        if inverse {
                            let scale = 1 / Double(n)
                            for i in 0..<n {
                                re[i] *= scale
                                im[i] *= scale
                            }
                        }
                    }
                }
            }
        }
    }
}
