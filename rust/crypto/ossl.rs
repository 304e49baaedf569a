//! The one OpenSSL call the safe `openssl` crate does not offer.
//!
//! `openssl::ec::EcPoint` frees with `EC_POINT_free`, which leaves the point's
//! coordinates in freed memory. For the shared point g^xy of an ECP exchange
//! that is secret, so it is released with `EC_POINT_clear_free` (OpenSSL:
//! "destroys the point and clears the memory"), declared here because
//! openssl-sys does not bind it.

use foreign_types::ForeignType;
use openssl::ec::EcPoint;

extern "C" {
    // libcrypto, linked by openssl-sys: void EC_POINT_clear_free(EC_POINT *point);
    fn EC_POINT_clear_free(point: *mut openssl_sys::EC_POINT);
}

/// Clear and free an owned point.
pub fn clear_free_point(point: EcPoint) {
    let ptr = point.as_ptr();
    // Ownership moves to OpenSSL below: forget the Rust owner so that its Drop
    // (EC_POINT_free) does not run a second time on the same pointer.
    core::mem::forget(point);
    // SAFETY: `ptr` came from a live `EcPoint` we owned and have just forgotten,
    // so it is valid, non-null and freed exactly once, here.
    unsafe { EC_POINT_clear_free(ptr) }
}
