//! Single-use Diffie-Hellman key pairs for IKE (RFC 2409 section 5: g^xy).
//!
//! `start(group)` draws a private value from the OS CSPRNG and computes the
//! public value; `KeyPair::complete(peer)` consumes the pair, validates the
//! peer's value and returns the shared secret, left-padded to the group size.
//!
//! Implementation, chosen by measurement (bench/README.md, "Diffie-Hellman"):
//! - MODP `g^x`: our own constant-time fixed-base table (`mont::FixedBase`),
//!   built once per group on first use; 4-bit digits, one Montgomery
//!   multiplication per digit.
//! - MODP `y^x`: OpenSSL's `BN_mod_exp_mont_consttime` (selected by setting
//!   `BN_FLG_CONSTTIME` on the exponent). The exponent's bit length is made
//!   public-independent: random exponents have their top bit set, and group
//!   24 exponents are raised by `q` or `2q` to exactly 257 bits (y has order q).
//! - ECP: OpenSSL's `EC_POINT_mul` (constant-time nistz256 / Montgomery ladder).
//!
//! Secrets live in `Zeroizing` buffers and in OpenSSL "secure" BIGNUMs, which
//! OpenSSL clears when freed (so does `BN_CTX_free` for its temporaries); the
//! shared EC point is released with `EC_POINT_clear_free` (`ossl.rs`).

#![forbid(unsafe_code)]

use std::sync::OnceLock;

use openssl::bn::{BigNum, BigNumContext, BigNumRef};
use openssl::ec::{EcGroup, EcPoint};
use openssl::nid::Nid;
use zeroize::Zeroizing;

use super::groups::{self, Curve, GroupSpec, Kind, GROUPS};
use super::mont::FixedBase;
use super::ossl::clear_free_point;
use crate::error::DhError;

/// Shared secret g^xy, wiped from memory when dropped.
pub type SharedSecret = Zeroizing<Vec<u8>>;

const BACKEND: DhError = DhError::Backend("OpenSSL bignum/EC operation failed");

fn ossl<T>(r: Result<T, openssl::error::ErrorStack>) -> Result<T, DhError> {
    r.map_err(|_| BACKEND)
}

/// Per-group constants, parsed once.
struct ModpCtx {
    p: BigNum,
    p_bytes: Vec<u8>,
    /// p - 1, big-endian, same length as p.
    pm1_bytes: Vec<u8>,
    g_bytes: Vec<u8>,
    /// Subgroup order (group 24), big-endian.
    q: Option<(BigNum, Vec<u8>)>,
    exponent_bits: usize,
    fixed: OnceLock<Option<FixedBase>>,
}

struct EcpCtx {
    group: EcGroup,
    /// Field prime, big-endian, `size` bytes.
    p_bytes: Vec<u8>,
    /// Group order n, big-endian, `size` bytes.
    n_bytes: Vec<u8>,
    /// Bits of n (random scalars are drawn with this many bits).
    n_bits: usize,
}

enum Ctx {
    Modp(ModpCtx),
    Ecp(EcpCtx),
}

static CTX: [OnceLock<Result<Ctx, DhError>>; 12] = [const { OnceLock::new() }; 12];

fn ctx_for(spec: &'static GroupSpec) -> Result<&'static Ctx, DhError> {
    let idx = groups::index(spec.id)?;
    CTX[idx]
        .get_or_init(|| build_ctx(spec))
        .as_ref()
        .map_err(|e| e.clone())
}

fn build_ctx(spec: &GroupSpec) -> Result<Ctx, DhError> {
    const BAD_TABLE: DhError = DhError::Backend("group table constant is not valid hex");
    match spec.kind {
        Kind::Modp {
            prime_hex,
            generator_hex,
            order_hex,
            exponent_bits,
        } => {
            let p_bytes = groups::hex_to_bytes(prime_hex).ok_or(BAD_TABLE)?;
            let mut pm1_bytes = p_bytes.clone();
            // p is odd: p - 1 only clears the lowest bit.
            if let Some(last) = pm1_bytes.last_mut() {
                *last &= 0xfe;
            }
            let g_bytes = left_pad(
                &groups::hex_to_bytes(generator_hex).ok_or(BAD_TABLE)?,
                spec.size,
            )
            .ok_or(BAD_TABLE)?;
            let q = match order_hex {
                Some(h) => {
                    let qb = groups::hex_to_bytes(h).ok_or(BAD_TABLE)?;
                    Some((ossl(BigNum::from_slice(&qb))?, qb))
                }
                None => None,
            };
            Ok(Ctx::Modp(ModpCtx {
                p: ossl(BigNum::from_slice(&p_bytes))?,
                p_bytes,
                pm1_bytes,
                g_bytes,
                q,
                exponent_bits,
                fixed: OnceLock::new(),
            }))
        }
        Kind::Ecp { curve } => {
            let nid = match curve {
                Curve::P256 => Nid::X9_62_PRIME256V1,
                Curve::P384 => Nid::SECP384R1,
                Curve::P521 => Nid::SECP521R1,
            };
            let group = ossl(EcGroup::from_curve_name(nid))?;
            let mut bn = ossl(BigNumContext::new())?;
            let (mut p, mut a, mut b, mut n) = (
                ossl(BigNum::new())?,
                ossl(BigNum::new())?,
                ossl(BigNum::new())?,
                ossl(BigNum::new())?,
            );
            ossl(group.components_gfp(&mut p, &mut a, &mut b, &mut bn))?;
            ossl(group.order(&mut n, &mut bn))?;
            let size = spec.size as i32;
            Ok(Ctx::Ecp(EcpCtx {
                p_bytes: ossl(p.to_vec_padded(size))?,
                n_bytes: ossl(n.to_vec_padded(size))?,
                n_bits: n.num_bits() as usize,
                group,
            }))
        }
    }
}

/// `bytes` left-padded with zeros to `len`; `None` if longer.
fn left_pad(bytes: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len.checked_sub(bytes.len())?];
    out.extend_from_slice(bytes);
    Some(out)
}

/// Big-endian comparison of equal-length public byte strings: a < b.
fn less_than(a: &[u8], b: &[u8]) -> bool {
    a < b
}

/// a < b for equal-length big-endian byte strings, in time independent of
/// their values (for secret candidates in rejection sampling): the borrow out
/// of a - b.
fn ct_less_than(a: &[u8], b: &[u8]) -> bool {
    let mut borrow = 0u16;
    for (x, y) in a.iter().zip(b.iter()).rev() {
        let d = (*x as u16).wrapping_sub(*y as u16).wrapping_sub(borrow);
        borrow = (d >> 8) & 1;
    }
    core::hint::black_box(borrow) == 1 && a.len() == b.len()
}

fn random_bytes(len: usize) -> Result<Zeroizing<Vec<u8>>, DhError> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    getrandom::fill(&mut buf)
        .map_err(|_| DhError::Backend("OS random source (getrandom) failed"))?;
    Ok(buf)
}

/// A BIGNUM from secret bytes: allocated as "secure" (cleared when freed) and
/// flagged for OpenSSL's constant-time code paths.
fn secret_bn(bytes: &[u8]) -> Result<BigNum, DhError> {
    let mut bn = ossl(BigNum::new_secure())?;
    ossl(bn.copy_from_slice(bytes))?;
    bn.set_const_time();
    Ok(bn)
}

/// Integer value of big-endian bytes is zero (constant time).
fn is_zero_ct(bytes: &[u8]) -> bool {
    core::hint::black_box(bytes.iter().fold(0u8, |acc, b| acc | b)) == 0
}

/// The private half of a key pair.
enum Private {
    /// Exponent as given to `y^x` (fixed-length, see module doc).
    Modp(Zeroizing<Vec<u8>>),
    /// Scalar, `size` bytes big-endian, 1 <= d < n.
    Ecp(Zeroizing<Vec<u8>>),
}

/// A single-use Diffie-Hellman key pair. `complete` consumes it.
pub struct KeyPair {
    spec: &'static GroupSpec,
    public: Vec<u8>,
    private: Private,
}

impl core::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyPair")
            .field("group", &self.spec.id)
            .finish_non_exhaustive()
    }
}

/// New key pair with a fresh private value from the OS CSPRNG.
pub fn start(group: u16) -> Result<KeyPair, DhError> {
    let spec = groups::spec(group)?;
    match ctx_for(spec)? {
        Ctx::Modp(c) => {
            let x = random_modp_exponent(c)?;
            modp_keypair(spec, c, x)
        }
        Ctx::Ecp(c) => {
            let d = random_scalar(spec, c)?;
            ecp_keypair(spec, c, d)
        }
    }
}

/// Key pair with a given private value (big-endian), for known-answer tests.
/// MODP: 1 < x < p - 1 (x < q for group 24); ECP: 1 <= d < n.
pub fn start_with_private(group: u16, private: &[u8]) -> Result<KeyPair, DhError> {
    let spec = groups::spec(group)?;
    let trimmed = {
        let first = private
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(private.len());
        &private[first..]
    };
    match ctx_for(spec)? {
        Ctx::Modp(c) => {
            let x = Zeroizing::new(
                left_pad(trimmed, spec.size)
                    .ok_or(DhError::InvalidPrivateValue("longer than the modulus"))?,
            );
            let bound = match &c.q {
                Some((_, q)) => left_pad(q, spec.size).ok_or(BACKEND)?,
                None => c.pm1_bytes.clone(),
            };
            if trimmed.is_empty() || trimmed == [1] || !less_than(&x, &bound) {
                return Err(DhError::InvalidPrivateValue("out of range for the group"));
            }
            modp_keypair(spec, c, Zeroizing::new(trimmed.to_vec()))
        }
        Ctx::Ecp(c) => {
            let d = Zeroizing::new(
                left_pad(trimmed, spec.size)
                    .ok_or(DhError::InvalidPrivateValue("longer than the group order"))?,
            );
            if trimmed.is_empty() || !less_than(&d, &c.n_bytes) {
                return Err(DhError::InvalidPrivateValue("not in [1, n-1]"));
            }
            ecp_keypair(spec, c, d)
        }
    }
}

/// Check the peer's public value of `group` as [`KeyPair::complete`] does, without a key
/// pair: a caller that answers before it computes g^xy refuses a bad value first.
pub fn check_peer(group: u16, peer: &[u8]) -> Result<(), DhError> {
    let spec = groups::spec(group)?;
    let mut bn = ossl(BigNumContext::new())?;
    match ctx_for(spec)? {
        Ctx::Modp(c) => modp_peer(spec, c, peer, &mut bn).map(|_| ()),
        Ctx::Ecp(c) => ecp_peer(spec, c, peer, &mut bn).map(|_| ()),
    }
}

/// One side of a handshake in one call: a fresh key pair and the shared secret
/// with `peer`. Returns (our public value, g^xy).
pub fn one_side(group: u16, peer: &[u8]) -> Result<(Vec<u8>, SharedSecret), DhError> {
    let kp = start(group)?;
    let public = kp.public.clone();
    let secret = kp.complete(peer)?;
    Ok((public, secret))
}

impl KeyPair {
    /// IKE group number.
    pub fn group(&self) -> u16 {
        self.spec.id
    }

    /// Public value: the KE payload data, left-padded to the group size.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// Validate the peer's public value and return g^xy, left-padded to the
    /// group size. Consumes the key pair (single use).
    pub fn complete(self, peer: &[u8]) -> Result<SharedSecret, DhError> {
        match (ctx_for(self.spec)?, &self.private) {
            (Ctx::Modp(c), Private::Modp(x)) => modp_shared(self.spec, c, x, peer),
            (Ctx::Ecp(c), Private::Ecp(d)) => ecp_shared(self.spec, c, d, peer),
            _ => Err(BACKEND),
        }
    }
}

// --- MODP --------------------------------------------------------------------

fn random_modp_exponent(c: &ModpCtx) -> Result<Zeroizing<Vec<u8>>, DhError> {
    match &c.q {
        None => {
            // exponent_bits is a multiple of 8 in the table: force the top bit
            // so every exponent has the same bit length.
            let mut x = random_bytes(c.exponent_bits.div_ceil(8))?;
            x[0] |= 0x80;
            Ok(x)
        }
        Some((_, q)) => {
            // Uniform in [1, q-1] by rejection; the loop ends with overwhelming
            // probability in one round (q > 2^255), and is bounded.
            for _ in 0..128 {
                let x = random_bytes(q.len())?;
                if !is_zero_ct(&x) & ct_less_than(&x, q) {
                    return Ok(x);
                }
            }
            Err(DhError::Backend(
                "random exponent rejection sampling did not finish",
            ))
        }
    }
}

/// For group 24: x + q or x + 2q, whichever has exactly bit length
/// bits(q) + 1, chosen without a secret-dependent branch. y^(x+kq) = y^x since
/// every validated y has order q.
fn blind_exponent(x: &[u8], q: &[u8]) -> Zeroizing<Vec<u8>> {
    let len = q.len() + 1;
    let add = |a: &[u8], b: &[u8]| -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(vec![0u8; len]);
        let mut carry = 0u16;
        for i in 0..len {
            let ai = if i < a.len() { a[a.len() - 1 - i] } else { 0 } as u16;
            let bi = if i < b.len() { b[b.len() - 1 - i] } else { 0 } as u16;
            let s = ai + bi + carry;
            out[len - 1 - i] = s as u8;
            carry = s >> 8;
        }
        out
    };
    let x1 = add(x, q);
    let x2 = add(&x1, q);
    // x1 has bits(q)+1 bits iff its top byte's lowest bit is set (q is a whole
    // number of bytes with its top bit set, so x1 < 2^(8*len-7)).
    let take_x1 = core::hint::black_box(x1[0] & 1).wrapping_neg();
    let mut out = Zeroizing::new(vec![0u8; len]);
    for i in 0..len {
        out[i] = (x1[i] & take_x1) | (x2[i] & !take_x1);
    }
    out
}

fn modp_keypair(
    spec: &'static GroupSpec,
    c: &ModpCtx,
    x: Zeroizing<Vec<u8>>,
) -> Result<KeyPair, DhError> {
    let fixed = c
        .fixed
        .get_or_init(|| FixedBase::new(&c.p_bytes, &c.g_bytes, c.exponent_bits))
        .as_ref();
    let public = match fixed.and_then(|f| f.pow(&x)) {
        Some(y) => y,
        None => {
            // Exponent longer than the table (only for caller-supplied private
            // values): OpenSSL's constant-time modexp.
            let g = ossl(BigNum::from_slice(&c.g_bytes))?;
            let e = secret_bn(&x)?;
            let mut r = ossl(BigNum::new())?;
            let mut bn = ossl(BigNumContext::new())?;
            ossl(r.mod_exp(&g, &e, &c.p, &mut bn))?;
            ossl(r.to_vec_padded(spec.size as i32))?
        }
    };
    let x = match &c.q {
        Some((_, q)) => blind_exponent(&x, q),
        None => x,
    };
    Ok(KeyPair {
        spec,
        public,
        private: Private::Modp(x),
    })
}

/// The peer's MODP public value once it passes every check: the length, 1 < y < p - 1
/// (RFC 2631 / NIST SP 800-56A 5.6.2.3.1: rejects 0, 1, p-1 and >= p) and, for a group
/// with a prime-order subgroup, y^q == 1 (public values: variable time is fine).
fn modp_peer(spec: &GroupSpec, c: &ModpCtx, peer: &[u8], bn: &mut BigNumContext) -> Result<BigNum, DhError> {
    if peer.len() != spec.size {
        return Err(DhError::InvalidPeerValue("wrong length for the group"));
    }
    let mut two = vec![0u8; spec.size];
    if let Some(last) = two.last_mut() {
        *last = 2;
    }
    if less_than(peer, &two) || !less_than(peer, &c.pm1_bytes) {
        return Err(DhError::InvalidPeerValue("not in the range 1 < y < p-1"));
    }
    let y = ossl(BigNum::from_slice(peer))?;
    if let Some((q, _)) = &c.q {
        let mut t = ossl(BigNum::new())?;
        ossl(t.mod_exp(&y, q, &c.p, bn))?;
        if !is_one(&t) {
            return Err(DhError::InvalidPeerValue(
                "not in the prime-order subgroup (y^q != 1)",
            ));
        }
    }
    Ok(y)
}

fn modp_shared(
    spec: &GroupSpec,
    c: &ModpCtx,
    x: &[u8],
    peer: &[u8],
) -> Result<SharedSecret, DhError> {
    let mut bn = ossl(BigNumContext::new())?;
    let y = modp_peer(spec, c, peer, &mut bn)?;
    let e = secret_bn(x)?;
    let mut z = ossl(BigNum::new_secure())?;
    ossl(z.mod_exp(&y, &e, &c.p, &mut bn))?;
    let out = Zeroizing::new(ossl(z.to_vec_padded(spec.size as i32))?);
    Ok(out)
}

fn is_one(n: &BigNumRef) -> bool {
    n.num_bits() == 1
}

// --- ECP ---------------------------------------------------------------------

fn random_scalar(spec: &GroupSpec, c: &EcpCtx) -> Result<Zeroizing<Vec<u8>>, DhError> {
    // Rejection sampling in [1, n-1] with n's bit length (FIPS 186-5 A.4.2).
    let excess = spec.size * 8 - c.n_bits;
    for _ in 0..128 {
        let mut d = random_bytes(spec.size)?;
        d[0] &= 0xffu8 >> excess;
        if !is_zero_ct(&d) & ct_less_than(&d, &c.n_bytes) {
            return Ok(d);
        }
    }
    Err(DhError::Backend(
        "random scalar rejection sampling did not finish",
    ))
}

/// x | y of an affine point, each padded to `size`.
fn encode_point(
    spec: &GroupSpec,
    c: &EcpCtx,
    pt: &EcPoint,
    bn: &mut BigNumContext,
) -> Result<Vec<u8>, DhError> {
    let mut x = ossl(BigNum::new())?;
    let mut y = ossl(BigNum::new())?;
    ossl(pt.affine_coordinates(&c.group, &mut x, &mut y, bn))?;
    let mut out = ossl(x.to_vec_padded(spec.size as i32))?;
    out.extend_from_slice(&ossl(y.to_vec_padded(spec.size as i32))?);
    Ok(out)
}

fn ecp_keypair(
    spec: &'static GroupSpec,
    c: &EcpCtx,
    d: Zeroizing<Vec<u8>>,
) -> Result<KeyPair, DhError> {
    let mut bn = ossl(BigNumContext::new())?;
    let k = secret_bn(&d)?;
    let mut pt = ossl(EcPoint::new(&c.group))?;
    ossl(pt.mul_generator2(&c.group, &k, &mut bn))?;
    let public = encode_point(spec, c, &pt, &mut bn)?;
    Ok(KeyPair {
        spec,
        public,
        private: Private::Ecp(d),
    })
}

/// The peer's ECP public value (KE data `x | y`) as a point once it passes every check:
/// the length, both coordinates below the field prime, on the curve, not infinity.
fn ecp_peer(spec: &GroupSpec, c: &EcpCtx, peer: &[u8], bn: &mut BigNumContext) -> Result<EcPoint, DhError> {
    if peer.len() != 2 * spec.size {
        return Err(DhError::InvalidPeerValue("wrong length for the group"));
    }
    let (px, py) = peer.split_at(spec.size);
    if !less_than(px, &c.p_bytes) || !less_than(py, &c.p_bytes) {
        return Err(DhError::InvalidPeerValue(
            "coordinate not below the field prime",
        ));
    }
    let mut sec1 = Vec::with_capacity(1 + peer.len());
    sec1.push(0x04);
    sec1.extend_from_slice(peer);
    // EC_POINT_oct2point rejects points that are not on the curve.
    let q = EcPoint::from_bytes(&c.group, &sec1, bn)
        .map_err(|_| DhError::InvalidPeerValue("point is not on the curve"))?;
    if q.is_infinity(&c.group) || !ossl(q.is_on_curve(&c.group, bn))? {
        return Err(DhError::InvalidPeerValue("point is not on the curve"));
    }
    Ok(q)
}

fn ecp_shared(
    spec: &GroupSpec,
    c: &EcpCtx,
    d: &[u8],
    peer: &[u8],
) -> Result<SharedSecret, DhError> {
    let mut bn = ossl(BigNumContext::new())?;
    let q = ecp_peer(spec, c, peer, &mut bn)?;
    // NIST P-curves have cofactor 1: every on-curve point but infinity has order n.
    let k = secret_bn(d)?;
    let mut s = ossl(EcPoint::new(&c.group))?;
    let result = shared_x(spec, c, &mut s, &q, &k, &mut bn);
    clear_free_point(s);
    result
}

/// x coordinate of `k * q`, computed into `s` (which the caller clears).
fn shared_x(
    spec: &GroupSpec,
    c: &EcpCtx,
    s: &mut EcPoint,
    q: &EcPoint,
    k: &BigNum,
    bn: &mut BigNumContext,
) -> Result<SharedSecret, DhError> {
    ossl(s.mul2(&c.group, q, k, bn))?;
    if s.is_infinity(&c.group) {
        return Err(DhError::InvalidPeerValue(
            "shared point is the point at infinity",
        ));
    }
    let mut x = ossl(BigNum::new_secure())?;
    let mut y = ossl(BigNum::new_secure())?;
    ossl(s.affine_coordinates(&c.group, &mut x, &mut y, bn))?;
    Ok(Zeroizing::new(ossl(x.to_vec_padded(spec.size as i32))?))
}

/// IDs of every supported group.
pub fn supported_groups() -> impl Iterator<Item = u16> {
    GROUPS.iter().map(|g| g.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        groups::hex_to_bytes(s).unwrap()
    }

    #[test]
    fn rfc5903_p256_known_answer() {
        // RFC 5903 section 8.1.
        let i = start_with_private(
            19,
            &h("c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433"),
        )
        .unwrap();
        let r = start_with_private(
            19,
            &h("c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53"),
        )
        .unwrap();
        assert_eq!(i.public(), &h("dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c37725811805271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3")[..]);
        let rp = r.public().to_vec();
        let ip = i.public().to_vec();
        let z1 = i.complete(&rp).unwrap();
        let z2 = r.complete(&ip).unwrap();
        assert_eq!(
            &z1[..],
            &h("d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de")[..]
        );
        assert_eq!(z1, z2);
    }

    #[test]
    fn modp_both_sides_agree_and_sizes_are_padded() {
        for g in [1u16, 2, 5, 14, 24] {
            let a = start(g).unwrap();
            let b = start(g).unwrap();
            let size = groups::spec(g).unwrap().size;
            assert_eq!(a.public().len(), size);
            let (ap, bp) = (a.public().to_vec(), b.public().to_vec());
            let za = a.complete(&bp).unwrap();
            let zb = b.complete(&ap).unwrap();
            assert_eq!(za.len(), size);
            assert_eq!(za, zb, "group {g}");
        }
    }

    #[test]
    fn fixed_base_agrees_with_openssl_modexp() {
        // A private value longer than the table takes the OpenSSL path; the
        // same value's low 256 bits take the table path: compare both to
        // OpenSSL's plain BN_mod_exp.
        let p = h(match groups::spec(14).unwrap().kind {
            Kind::Modp { prime_hex, .. } => prime_hex,
            _ => unreachable!(),
        });
        let pbn = BigNum::from_slice(&p).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        for x in [
            vec![0x80u8; 32],
            (0..32u8).map(|i| i.wrapping_mul(97) ^ 0x5a).collect(),
            vec![0x01u8; 200],
        ] {
            let kp = start_with_private(14, &x).unwrap();
            let mut r = BigNum::new().unwrap();
            r.mod_exp(
                &BigNum::from_u32(2).unwrap(),
                &BigNum::from_slice(&x).unwrap(),
                &pbn,
                &mut ctx,
            )
            .unwrap();
            assert_eq!(kp.public(), &r.to_vec_padded(256).unwrap()[..]);
        }
    }

    #[test]
    fn group24_exponent_blinding_has_fixed_length_and_same_result() {
        let q = h(groups::MODP_2048_256_Q);
        for x in [vec![1u8], vec![0xffu8; 31], {
            let mut v = q.clone();
            let n = v.len();
            v[n - 1] -= 1;
            v
        }] {
            let b = blind_exponent(&x, &q);
            assert_eq!(b.len(), 33);
            assert_eq!(b[0], 1, "bit length must be exactly 257");
        }
        let a = start(24).unwrap();
        let b = start(24).unwrap();
        let (ap, bp) = (a.public().to_vec(), b.public().to_vec());
        assert_eq!(a.complete(&bp).unwrap(), b.complete(&ap).unwrap());
    }

    #[test]
    fn bad_peer_values_are_rejected() {
        let size = 256;
        let p = h(match groups::spec(14).unwrap().kind {
            Kind::Modp { prime_hex, .. } => prime_hex,
            _ => unreachable!(),
        });
        let mut pm1 = p.clone();
        pm1[size - 1] -= 1;
        let mut one = vec![0u8; size];
        one[size - 1] = 1;
        for bad in [
            vec![0u8; size],
            one,
            pm1,
            p.clone(),
            vec![0xffu8; size],
            vec![2u8; size + 1],
            vec![2u8; size - 1],
            vec![],
        ] {
            let kp = start(14).unwrap();
            assert!(matches!(
                kp.complete(&bad),
                Err(DhError::InvalidPeerValue(_))
            ));
        }
        // Group 24: 2 is in range but not in the order-q subgroup.
        let mut two = vec![0u8; size];
        two[size - 1] = 2;
        assert!(matches!(
            start(24).unwrap().complete(&two),
            Err(DhError::InvalidPeerValue(_))
        ));
        // ECP: off-curve point and wrong length.
        let kp = start(19).unwrap();
        let mut pt = kp.public().to_vec();
        pt[63] ^= 1;
        assert!(matches!(
            start(19).unwrap().complete(&pt),
            Err(DhError::InvalidPeerValue(_))
        ));
        assert!(matches!(
            start(19).unwrap().complete(&pt[..63]),
            Err(DhError::InvalidPeerValue(_))
        ));
        assert!(matches!(
            start(19).unwrap().complete(&[0u8; 64]),
            Err(DhError::InvalidPeerValue(_))
        ));
    }

    #[test]
    fn private_values_are_range_checked_and_unknown_groups_fail() {
        assert!(matches!(start(3), Err(DhError::UnknownGroup(3))));
        assert!(matches!(
            start_with_private(14, &[]),
            Err(DhError::InvalidPrivateValue(_))
        ));
        assert!(matches!(
            start_with_private(14, &[0, 1]),
            Err(DhError::InvalidPrivateValue(_))
        ));
        assert!(matches!(
            start_with_private(19, &[0xff; 32]),
            Err(DhError::InvalidPrivateValue(_))
        ));
        assert!(matches!(
            start_with_private(24, &[0xff; 32]),
            Err(DhError::InvalidPrivateValue(_))
        ));
    }

    #[test]
    fn constant_time_comparison_matches_ordinary_comparison() {
        let samples: [&[u8]; 6] = [
            &[0, 0],
            &[0, 1],
            &[1, 0],
            &[0xff, 0xff],
            &[0x80, 0x00],
            &[0x7f, 0xff],
        ];
        for a in samples {
            for b in samples {
                assert_eq!(ct_less_than(a, b), a < b, "{a:?} < {b:?}");
            }
        }
    }

    #[test]
    fn random_exponents_have_the_configured_length() {
        for g in [14u16, 18] {
            let Ctx::Modp(c) = ctx_for(groups::spec(g).unwrap()).unwrap() else {
                unreachable!()
            };
            let x = random_modp_exponent(c).unwrap();
            assert_eq!(x.len() * 8, c.exponent_bits);
            assert!(x[0] & 0x80 != 0);
            assert!(c.exponent_bits >= 2 * groups::spec(g).unwrap().strength as usize);
        }
    }
}
