//! Constant-time Montgomery arithmetic modulo an odd public modulus and a
//! fixed-base exponentiation table for `g^x` (the key-generation half of
//! finite-field Diffie-Hellman).
//!
//! Numbers are little-endian vectors of `u64` limbs, all exactly `n` limbs
//! long. Multiplication is the CIOS method (Koc, Acar, Kaliski, "Analyzing and
//! Comparing Montgomery Multiplication Algorithms", IEEE Micro 1996) with a
//! masked final subtraction: no branch and no memory index depends on a
//! secret. The fixed-base table holds `g^(d * 16^i)` for every 4-bit digit
//! position `i` and digit `d`; `g^x` is then one multiplication per digit,
//! each operand picked by scanning all 16 entries of the row with masks.

#![forbid(unsafe_code)]

use zeroize::Zeroize;

/// Largest supported modulus, in 64-bit limbs (8192 bits: MODP group 18).
pub const MAX_LIMBS: usize = 128;

/// Multiply-accumulate: `t + a * b + c` as (low, high) words; never overflows.
#[inline(always)]
fn mac(t: u64, a: u64, b: u64, c: u64) -> (u64, u64) {
    let r = (t as u128) + (a as u128) * (b as u128) + (c as u128);
    (r as u64, (r >> 64) as u64)
}

/// All-ones when `a == b`, else zero, without a branch.
#[inline(always)]
fn ct_eq_mask(a: u64, b: u64) -> u64 {
    let x = a ^ b;
    // (x | -x) has its top bit set iff x != 0.
    let nonzero = (x | x.wrapping_neg()) >> 63;
    core::hint::black_box(nonzero ^ 1).wrapping_neg()
}

/// Big-endian bytes to `n` little-endian limbs; `None` if the value does not fit.
pub fn limbs_from_be(bytes: &[u8], n: usize) -> Option<Vec<u64>> {
    let mut v = vec![0u64; n];
    for (i, byte) in bytes.iter().rev().enumerate() {
        if i / 8 >= n {
            if *byte != 0 {
                return None;
            }
            continue;
        }
        v[i / 8] |= (*byte as u64) << (8 * (i % 8));
    }
    Some(v)
}

/// `n` limbs to big-endian bytes, left-padded (or truncated from the left) to `len`.
pub fn limbs_to_be(limbs: &[u64], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, slot) in out.iter_mut().rev().enumerate() {
        let limb = i / 8;
        if limb < limbs.len() {
            *slot = (limbs[limb] >> (8 * (i % 8))) as u8;
        }
    }
    out
}

/// Montgomery context for one odd modulus `m` of `n` limbs, `R = 2^(64 n)`.
pub struct MontCtx {
    n: usize,
    m: Vec<u64>,
    /// `-m^-1 mod 2^64`.
    m0inv: u64,
    /// `R mod m`: the Montgomery form of 1.
    one: Vec<u64>,
    /// `R^2 mod m`: converts into Montgomery form.
    rr: Vec<u64>,
}

impl MontCtx {
    /// Context for the big-endian modulus `m_be`; `None` unless it is odd,
    /// greater than 1 and at most `MAX_LIMBS` limbs.
    pub fn new(m_be: &[u8]) -> Option<MontCtx> {
        let n = m_be.len().div_ceil(8);
        if n == 0 || n > MAX_LIMBS {
            return None;
        }
        let m = limbs_from_be(m_be, n)?;
        if m[0] & 1 == 0 || m[n - 1] == 0 {
            return None;
        }
        // Newton iteration for m[0]^-1 mod 2^64: each step doubles the correct bits.
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(m[0].wrapping_mul(inv)));
        }
        // R mod m and R^2 mod m by doubling 1 (public data: branches are fine).
        let mut x = vec![0u64; n];
        x[0] = 1;
        for _ in 0..64 * n {
            x = Self::double_mod(&x, &m);
        }
        let one = x.clone();
        for _ in 0..64 * n {
            x = Self::double_mod(&x, &m);
        }
        Some(MontCtx {
            n,
            m,
            m0inv: inv.wrapping_neg(),
            one,
            rr: x,
        })
    }

    /// `2a mod m` for `a < m` (public values only).
    fn double_mod(a: &[u64], m: &[u64]) -> Vec<u64> {
        let n = m.len();
        let mut s = vec![0u64; n];
        let mut carry = 0u64;
        for j in 0..n {
            s[j] = (a[j] << 1) | carry;
            carry = a[j] >> 63;
        }
        let (d, borrow) = sub(&s, m);
        if carry == 1 || borrow == 0 {
            d
        } else {
            s
        }
    }

    /// `out = a * b / R mod m` for `a, b < m`; constant time. Sizes of the
    /// MODP groups run a loop specialised at compile time (about 25% faster).
    pub fn mul(&self, a: &[u64], b: &[u64], out: &mut [u64]) {
        match self.n {
            12 => self.mul_fixed::<12>(a, b, out),
            16 => self.mul_fixed::<16>(a, b, out),
            24 => self.mul_fixed::<24>(a, b, out),
            32 => self.mul_fixed::<32>(a, b, out),
            48 => self.mul_fixed::<48>(a, b, out),
            64 => self.mul_fixed::<64>(a, b, out),
            96 => self.mul_fixed::<96>(a, b, out),
            128 => self.mul_fixed::<128>(a, b, out),
            _ => self.mul_any(a, b, out),
        }
    }

    /// CIOS for any limb count.
    fn mul_any(&self, a: &[u64], b: &[u64], out: &mut [u64]) {
        let n = self.n;
        let m = &self.m;
        let mut buf = [0u64; MAX_LIMBS + 2];
        let t = &mut buf[..n + 2];
        for &bi in b.iter().take(n) {
            let mut c = 0u64;
            for j in 0..n {
                let (lo, hi) = mac(t[j], a[j], bi, c);
                t[j] = lo;
                c = hi;
            }
            let s = (t[n] as u128) + (c as u128);
            t[n] = s as u64;
            t[n + 1] = (s >> 64) as u64;
            let q = t[0].wrapping_mul(self.m0inv);
            let (_, mut c) = mac(t[0], q, m[0], 0);
            for j in 1..n {
                let (lo, hi) = mac(t[j], q, m[j], c);
                t[j - 1] = lo;
                c = hi;
            }
            let s = (t[n] as u128) + (c as u128);
            t[n - 1] = s as u64;
            t[n] = t[n + 1] + ((s >> 64) as u64);
        }
        let top = t[n];
        Self::final_sub(&t[..n], top, m, out);
        buf.zeroize();
    }

    /// Fused multiply-reduce (FIOS) with the limb count known at compile time.
    fn mul_fixed<const N: usize>(&self, a: &[u64], b: &[u64], out: &mut [u64]) {
        let (Ok(a), Ok(b), Ok(m)) = (
            <&[u64; N]>::try_from(&a[..N.min(a.len())]),
            <&[u64; N]>::try_from(&b[..N.min(b.len())]),
            <&[u64; N]>::try_from(&self.m[..]),
        ) else {
            return self.mul_any(a, b, out);
        };
        let mut t = [0u64; N];
        let mut top = 0u64;
        for &bi in b.iter() {
            // t = (t + a * bi + q * m) / 2^64 with q chosen to clear the low word.
            let (lo0, mut c1) = mac(t[0], a[0], bi, 0);
            let q = lo0.wrapping_mul(self.m0inv);
            let (_, mut c2) = mac(lo0, q, m[0], 0);
            for j in 1..N {
                let (lo, hi) = mac(t[j], a[j], bi, c1);
                c1 = hi;
                let (lo2, hi2) = mac(lo, q, m[j], c2);
                c2 = hi2;
                t[j - 1] = lo2;
            }
            let s = (top as u128) + (c1 as u128) + (c2 as u128);
            t[N - 1] = s as u64;
            top = (s >> 64) as u64;
        }
        Self::final_sub(&t, top, m, out);
        t.zeroize();
    }

    /// `out = t - m` if the (n+1)-limb value `top:t` is at least `m`, else `t`
    /// (t < 2m), selected with a mask.
    #[inline(always)]
    fn final_sub(t: &[u64], top: u64, m: &[u64], out: &mut [u64]) {
        let n = m.len();
        let mut borrow = 0u64;
        for j in 0..n {
            let d = (t[j] as u128)
                .wrapping_sub(m[j] as u128)
                .wrapping_sub(borrow as u128);
            out[j] = d as u64;
            borrow = ((d >> 64) as u64) & 1;
        }
        let keep_diff = core::hint::black_box((top | (borrow ^ 1)) & 1).wrapping_neg();
        for j in 0..n {
            out[j] = (out[j] & keep_diff) | (t[j] & !keep_diff);
        }
    }

    /// Montgomery form of `a < m`.
    pub fn to_mont(&self, a: &[u64], out: &mut [u64]) {
        self.mul(a, &self.rr, out);
    }

    /// Normal form of a Montgomery-form value.
    pub fn out_of_mont(&self, a: &[u64], out: &mut [u64]) {
        let mut unit = vec![0u64; self.n];
        unit[0] = 1;
        self.mul(a, &unit, out);
    }
}

/// `a - b` over equal-length limb vectors, with the final borrow (0 or 1).
fn sub(a: &[u64], b: &[u64]) -> (Vec<u64>, u64) {
    let mut d = vec![0u64; a.len()];
    let mut borrow = 0u64;
    for j in 0..a.len() {
        let x = (a[j] as u128)
            .wrapping_sub(b[j] as u128)
            .wrapping_sub(borrow as u128);
        d[j] = x as u64;
        borrow = ((x >> 64) as u64) & 1;
    }
    (d, borrow)
}

/// Precomputed powers of a fixed base `g`: row `i` holds `g^(d * 16^i)`,
/// `d = 0..16`, in Montgomery form. Covers exponents of `4 * rows` bits.
pub struct FixedBase {
    ctx: MontCtx,
    rows: usize,
    /// `rows * 16 * n` limbs, row-major.
    table: Vec<u64>,
    modulus_len: usize,
}

impl FixedBase {
    /// Table for base `g_be` modulo `m_be`, for exponents up to `exp_bits` bits.
    pub fn new(m_be: &[u8], g_be: &[u8], exp_bits: usize) -> Option<FixedBase> {
        let ctx = MontCtx::new(m_be)?;
        let n = ctx.n;
        let g = limbs_from_be(g_be, n)?;
        if sub(&g, &ctx.m).1 == 0 {
            return None; // g >= m
        }
        let rows = exp_bits.div_ceil(4);
        let mut table = vec![0u64; rows * 16 * n];
        let mut base = vec![0u64; n];
        ctx.to_mont(&g, &mut base);
        let mut tmp = vec![0u64; n];
        for i in 0..rows {
            let row = &mut table[i * 16 * n..(i + 1) * 16 * n];
            row[..n].copy_from_slice(&ctx.one);
            for d in 1..16 {
                let (prev, cur) = row.split_at_mut(d * n);
                ctx.mul(&prev[(d - 1) * n..], &base, &mut cur[..n]);
            }
            // next base = g^(16^(i+1)) = row[15] * base
            ctx.mul(&row[15 * n..16 * n], &base, &mut tmp);
            core::mem::swap(&mut base, &mut tmp);
        }
        let modulus_len = m_be.len();
        Some(FixedBase {
            ctx,
            rows,
            table,
            modulus_len,
        })
    }

    /// `g^x mod m` for the big-endian exponent `x_be`, as big-endian bytes
    /// left-padded to the modulus length. Constant time in `x` (every row and
    /// every entry is touched); `None` if `x` has more than `max_exp_bits` bits.
    pub fn pow(&self, x_be: &[u8]) -> Option<Vec<u8>> {
        let n = self.ctx.n;
        let mut acc = self.ctx.one.clone();
        let mut pick = vec![0u64; n];
        let mut next = vec![0u64; n];
        let nbytes = x_be.len();
        if nbytes > self.rows.div_ceil(2) {
            // Only allowed when the extra high bytes are zero (public length check).
            let extra = nbytes - self.rows.div_ceil(2);
            if x_be[..extra].iter().fold(0u8, |a, b| a | b) != 0 {
                return None;
            }
        }
        for i in 0..self.rows {
            let byte_pos = i / 2;
            let digit = if byte_pos < nbytes {
                let b = x_be[nbytes - 1 - byte_pos] as u64;
                (b >> (4 * (i % 2))) & 0xf
            } else {
                0
            };
            let row = &self.table[i * 16 * n..(i + 1) * 16 * n];
            pick.fill(0);
            for d in 0..16u64 {
                let mask = ct_eq_mask(d, digit);
                let entry = &row[d as usize * n..(d as usize + 1) * n];
                for j in 0..n {
                    pick[j] |= entry[j] & mask;
                }
            }
            self.ctx.mul(&acc, &pick, &mut next);
            core::mem::swap(&mut acc, &mut next);
        }
        self.ctx.out_of_mont(&acc, &mut next);
        let out = limbs_to_be(&next, self.modulus_len);
        acc.zeroize();
        pick.zeroize();
        next.zeroize();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schoolbook square-and-multiply with u128 on a 64-bit modulus: independent truth.
    fn pow_u64(g: u64, x: u64, m: u64) -> u64 {
        let (mut r, mut b, mut e) = (1u128, g as u128 % m as u128, x);
        while e > 0 {
            if e & 1 == 1 {
                r = r * b % m as u128;
            }
            b = b * b % m as u128;
            e >>= 1;
        }
        r as u64
    }

    #[test]
    fn rejects_even_and_oversized_moduli() {
        assert!(MontCtx::new(&[0x10, 0x00]).is_none());
        assert!(MontCtx::new(&[]).is_none());
        assert!(MontCtx::new(&vec![0xff; MAX_LIMBS * 8 + 1]).is_none());
    }

    #[test]
    fn single_limb_fixed_base_matches_square_and_multiply() {
        let m: u64 = 0xffff_ffff_ffff_ffc5; // largest 64-bit prime
        for (g, x) in [
            (2u64, 0u64),
            (2, 1),
            (3, 0xdead_beef),
            (7, u64::MAX),
            (12345, 1 << 63),
        ] {
            let fb = FixedBase::new(&m.to_be_bytes(), &g.to_be_bytes(), 64).unwrap();
            let got = fb.pow(&x.to_be_bytes()).unwrap();
            assert_eq!(
                u64::from_be_bytes(got.try_into().unwrap()),
                pow_u64(g, x, m),
                "g={g} x={x}"
            );
        }
    }

    #[test]
    fn multi_limb_mul_is_consistent() {
        // (a*b)*c == a*(b*c) and a*1 == a in Montgomery form, for a 3-limb odd modulus.
        let m_be: Vec<u8> = (1..=24u8).map(|v| v.wrapping_mul(37) | 1).collect();
        let ctx = MontCtx::new(&m_be).unwrap();
        let a = limbs_from_be(&[0x12; 20], 3).unwrap();
        let b = limbs_from_be(&[0x34; 23], 3).unwrap();
        let c = limbs_from_be(&[0x56; 10], 3).unwrap();
        let (mut ab, mut abc1, mut bc, mut abc2) = (vec![0; 3], vec![0; 3], vec![0; 3], vec![0; 3]);
        ctx.mul(&a, &b, &mut ab);
        ctx.mul(&ab, &c, &mut abc1);
        ctx.mul(&b, &c, &mut bc);
        ctx.mul(&a, &bc, &mut abc2);
        assert_eq!(abc1, abc2);
        let (mut am, mut back) = (vec![0; 3], vec![0; 3]);
        ctx.to_mont(&a, &mut am);
        ctx.out_of_mont(&am, &mut back);
        assert_eq!(back, a);
    }

    #[test]
    fn specialised_and_generic_multiplication_agree() {
        // The 2048-bit MODP prime (RFC 3526 group 14) through both code paths.
        let p = crate::crypto::groups::hex_to_bytes(crate::crypto::groups::MODP_2048_P).unwrap();
        let ctx = MontCtx::new(&p).unwrap();
        assert_eq!(ctx.n, 32);
        let mut a = limbs_from_be(&p, 32).unwrap();
        a[0] -= 12345; // p - 12345
        let mut b: Vec<u64> = (0..32u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        b[31] >>= 1;
        let (mut x, mut y) = (vec![0; 32], vec![0; 32]);
        for _ in 0..50 {
            ctx.mul_fixed::<32>(&a, &b, &mut x);
            ctx.mul_any(&a, &b, &mut y);
            assert_eq!(x, y);
            b.copy_from_slice(&x);
        }
    }

    #[test]
    fn exponent_longer_than_table_is_refused() {
        let fb = FixedBase::new(&0xffff_ffff_ffff_ffc5u64.to_be_bytes(), &[2], 8).unwrap();
        assert!(fb.pow(&[0x01, 0x00]).is_none());
        assert!(fb.pow(&[0x00, 0xff]).is_some());
    }
}
