//! The anti-replay window of RFC 4303 section 3.4.3 (32-bit sequence numbers, no ESN,
//! as IKEv1 negotiates): a bitmap of the last `WINDOW` sequence numbers below the
//! highest one authenticated. `check` runs before the ICV (cheap rejection), `accept`
//! after it (only authenticated packets move the window).

/// Window size in packets (RFC 4303: at least 32, 64 recommended; wider for fast links).
pub const WINDOW: u32 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Highest sequence number accepted (0: none yet).
    top: u32,
    /// Bit i of the map: sequence number `top - i` was accepted.
    map: [u64; WORDS],
}

impl ReplayWindow {
    pub fn new() -> ReplayWindow {
        ReplayWindow::default()
    }

    fn bit(&self, offset: u32) -> bool {
        self.map[(offset / 64) as usize] >> (offset % 64) & 1 == 1
    }

    /// May a packet with sequence number `seq` be authenticated and accepted?
    pub fn check(&self, seq: u32) -> bool {
        if seq == 0 {
            return false; // the first packet sent carries 1 (RFC 4303 3.3.3)
        }
        if seq > self.top {
            return true;
        }
        let offset = self.top - seq;
        offset < WINDOW && !self.bit(offset)
    }

    /// Record an authenticated `seq` (call only after `check` said yes).
    pub fn accept(&mut self, seq: u32) {
        if seq > self.top {
            self.shift(seq - self.top);
            self.top = seq;
            self.map[0] |= 1;
        } else {
            let offset = self.top - seq;
            if offset < WINDOW {
                self.map[(offset / 64) as usize] |= 1 << (offset % 64);
            }
        }
    }

    fn shift(&mut self, by: u32) {
        if by >= WINDOW {
            self.map = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = by % 64;
        for i in (0..WORDS).rev() {
            let mut v = if i >= words { self.map[i - words] << bits } else { 0 };
            if bits > 0 && i > words {
                v |= self.map[i - words - 1] >> (64 - bits);
            }
            self.map[i] = v;
        }
    }

    pub fn top(&self) -> u32 {
        self.top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(w: &mut ReplayWindow, seq: u32) -> bool {
        let ok = w.check(seq);
        if ok {
            w.accept(seq);
        }
        ok
    }

    #[test]
    fn zero_and_repeats_refused() {
        let mut w = ReplayWindow::new();
        assert!(!take(&mut w, 0));
        assert!(take(&mut w, 1));
        assert!(!take(&mut w, 1));
        assert!(take(&mut w, 3));
        assert!(take(&mut w, 2), "late but inside the window");
        assert!(!take(&mut w, 2));
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new();
        assert!(take(&mut w, 5000));
        assert!(take(&mut w, 5000 - (WINDOW - 1)), "the oldest number inside the window");
        assert!(!take(&mut w, 5000 - WINDOW), "one below the window");
        assert!(!take(&mut w, 5000 - (WINDOW - 1)));
        // move by 65 (crosses a word boundary): old bits follow
        assert!(take(&mut w, 5065));
        assert!(!take(&mut w, 5000));
        assert!(!take(&mut w, 5065 - WINDOW));
        assert!(take(&mut w, 5001), "never seen, 64 below the top");
        assert!(!take(&mut w, 5001));
        // a jump wider than the window clears everything
        assert!(take(&mut w, 100_000));
        assert!(take(&mut w, 100_000 - 1));
        assert!(!take(&mut w, 5065));
    }

    #[test]
    fn every_number_once_in_any_order() {
        let mut w = ReplayWindow::new();
        let mut order: Vec<u32> = (1..=2000).collect();
        // a fixed shuffle within blocks of 100 (all inside the window)
        for chunk in order.chunks_mut(100) {
            chunk.reverse();
        }
        for &s in &order {
            assert!(take(&mut w, s), "{s}");
        }
        for &s in &order[1900..] {
            assert!(!take(&mut w, s), "{s} repeated");
        }
        assert_eq!(w.top(), 2000);
    }

    #[test]
    fn highest_sequence_number() {
        let mut w = ReplayWindow::new();
        assert!(take(&mut w, u32::MAX));
        assert!(!take(&mut w, u32::MAX));
        assert!(take(&mut w, u32::MAX - 1));
    }
}
