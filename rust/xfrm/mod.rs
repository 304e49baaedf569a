//! The Linux kernel's IPsec (XFRM) over netlink (`NETLINK_XFRM`), pure Rust.
//!
//! Design note
//! -----------
//! The kernel keeps two databases: the SA database (states, keyed by destination, SPI
//! and protocol) and the security policy database (policies, keyed by selector and
//! direction). A key manager talks to both with netlink messages whose bodies are the C
//! structures of `linux/xfrm.h`, followed by attributes (`struct nlattr`):
//!
//! ```text
//!   ikecore (IpsecDriver)          netlink message            kernel
//!   Get SPI ──────────────> XFRM_MSG_ALLOCSPI ──> larval SA ──> XFRM_MSG_NEWSA (the SPI)
//!   Key Addition (outbound) ──> XFRM_MSG_NEWSA ──> SA ────────> ack / errno
//!   Key Update (inbound) ─────> XFRM_MSG_UPDSA ──> replaces the larval SA
//!   delete ───────────────────> XFRM_MSG_DELSA
//!   filters ──────────────────> XFRM_MSG_UPDPOLICY / DELPOLICY (dir in/out/fwd, tmpl)
//!   group XFRMNLGRP_ACQUIRE <── XFRM_MSG_ACQUIRE: a packet matched a policy with no SA
//!   group XFRMNLGRP_EXPIRE  <── XFRM_MSG_EXPIRE (soft: rekey, hard: gone),
//!                               XFRM_MSG_POLEXPIRE (a policy's lifetime ended)
//! ```
//!
//! `msg` encodes requests and parses the kernel's answers and notifications (byte
//! layouts checked against iproute2's requests and the kernel's notifications in
//! `vectors/`); `algs` maps ikecore's ESP names to the kernel's crypto API names;
//! `socket` owns the netlink socket. Messages that carry keys live in zeroizing buffers.

pub mod algs;
pub mod msg;
pub mod socket;

use core::fmt;

/// A refusal by the kernel (or the socket): the errno and a one-line reason, with the
/// kernel's extended acknowledgement text when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XfrmError {
    /// the positive errno (`libc::ESRCH`, `libc::EPROTONOSUPPORT`, ...); 0: not a system error
    pub errno: i32,
    /// the request that failed, e.g. "XFRM_MSG_NEWSA"
    pub request: &'static str,
    /// the kernel's extended ack message, or the C library's text for the errno
    pub text: String,
}

impl XfrmError {
    /// An error of the kernel or a system call: its name (`ESRCH`) and text.
    pub fn from_errno(request: &'static str, errno: i32, extack: Option<String>) -> Self {
        let text = extack.filter(|t| !t.is_empty()).unwrap_or_else(|| strerror(errno));
        XfrmError { errno, request, text }
    }

    /// A local error (bad argument, malformed answer): no errno.
    pub fn local(request: &'static str, text: impl Into<String>) -> Self {
        XfrmError { errno: 0, request, text: text.into() }
    }

    /// The errno's symbolic name (`EPROTONOSUPPORT`), or `errno N`.
    pub fn errno_name(&self) -> String {
        errno_name(self.errno)
    }
}

impl fmt::Display for XfrmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.errno == 0 {
            write!(f, "{}: {}", self.request, self.text)
        } else {
            write!(f, "{}: {} ({})", self.request, self.errno_name(), self.text)
        }
    }
}

impl std::error::Error for XfrmError {}

/// The C library's text for `errno` ("No such process").
pub fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or("")
        .to_string()
}

/// The symbolic names of the errnos the XFRM code of the kernel answers with.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}
