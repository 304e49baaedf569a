//! Wire numbers as open newtypes: named constants for the values the RFCs
//! define, and any other value carried through unchanged (printed in hex).

use core::fmt;

macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident($inner:ty) { $($(#[$cmeta:meta])* $const:ident = $value:expr),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $inner);

        impl $name {
            $($(#[$cmeta])* pub const $const: $name = $name($value);)*

            /// The RFC name of a known value, None for any other number.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($const)),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "{:#x}", self.0),
                }
            }
        }
    };
}

open_enum! {
    /// Next Payload Types (RFC 2408 section 3.1; NAT-T RFC 3947 and its drafts).
    PayloadType(u8) {
        NONE = 0, SA = 1, PROPOSAL = 2, TRANSFORM = 3, KE = 4, ID = 5, CERT = 6, CR = 7,
        HASH = 8, SIG = 9, NONCE = 10, N = 11, D = 12, VID = 13,
        NAT_D = 20, NAT_OA = 21, NAT_D_DRAFT = 130, NAT_OA_DRAFT = 131,
    }
}

open_enum! {
    /// Exchange Types (RFC 2408 section 3.1, RFC 2409 section 9).
    ExchangeType(u8) {
        BASE = 1, IDENTITY_PROTECTION = 2, AUTH_ONLY = 3, AGGRESSIVE = 4,
        INFORMATIONAL = 5, TRANSACTION = 6, QUICK_MODE = 32, NEW_GROUP_MODE = 33,
    }
}

/// Header flag: the payloads after the header are encrypted (RFC 2408 section 3.1).
pub const FLAG_ENCRYPTION: u8 = 0x01;
/// Header flag: commit bit.
pub const FLAG_COMMIT: u8 = 0x02;
/// Header flag: authentication only.
pub const FLAG_AUTH_ONLY: u8 = 0x04;

/// Domain of Interpretation for IPsec (RFC 2407 section 4.2).
pub const DOI_IPSEC: u32 = 1;
