//! JSON encoding of table rows held column by column (the monitor's listings).
//!
//! The monitor builds a listing as one Python list per column; turning 100,000 rows
//! of 23 columns into Python dicts and then JSON costs more than building the
//! columns. `RowsWriter` writes the objects straight from the columns instead:
//! `{"key":value,...}` per row, keys in the caller's order, RFC 8259 string escaping
//! (control characters as `\u00XX`, `"` and `\` escaped, everything else, non-ASCII
//! included, copied as UTF-8), bytes as lowercase hex strings, non-finite floats as
//! `null` (JSON has no NaN).

use std::io::Write;

/// One cell of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    /// Bytes, written as a string of lowercase hex digits (cookies, SPIs).
    Hex(&'a [u8]),
}

/// Writes the rows of a fixed set of columns as JSON objects separated by commas.
pub struct RowsWriter {
    keys: Vec<Vec<u8>>, // `"key":` with its leading `{` or `,` already in place
    out: Vec<u8>,
    rows: usize,
}

impl RowsWriter {
    /// A writer for rows with these keys (in this order); `capacity` is a size hint in bytes.
    pub fn new<S: AsRef<str>>(keys: &[S], capacity: usize) -> Self {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let mut prefix = vec![if i == 0 { b'{' } else { b',' }];
                write_str(&mut prefix, key.as_ref());
                prefix.push(b':');
                prefix
            })
            .collect();
        RowsWriter { keys, out: Vec::with_capacity(capacity), rows: 0 }
    }

    /// The number of columns.
    pub fn width(&self) -> usize {
        self.keys.len()
    }

    /// Starts a row (call `cell` once per column, in key order, then `end_row`).
    pub fn start_row(&mut self) {
        if self.rows > 0 {
            self.out.push(b',');
        }
        self.rows += 1;
        if self.keys.is_empty() {
            self.out.push(b'{');
        }
    }

    /// Writes the `column`-th cell of the current row.
    pub fn cell(&mut self, column: usize, cell: Cell<'_>) {
        self.out.extend_from_slice(&self.keys[column]);
        match cell {
            Cell::Null => self.out.extend_from_slice(b"null"),
            Cell::Bool(true) => self.out.extend_from_slice(b"true"),
            Cell::Bool(false) => self.out.extend_from_slice(b"false"),
            Cell::Int(v) => write_int(&mut self.out, v),
            Cell::Float(v) if v.is_finite() => {
                let _ = write!(self.out, "{v:?}"); // shortest round-trip form: 1.5, 1e-7, 100.0
            }
            Cell::Float(_) => self.out.extend_from_slice(b"null"),
            Cell::Str(s) => write_str(&mut self.out, s),
            Cell::Hex(bytes) => {
                self.out.reserve(bytes.len() * 2 + 2);
                self.out.push(b'"');
                for &b in bytes {
                    self.out.extend_from_slice(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
                }
                self.out.push(b'"');
            }
        }
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.out.push(b'}');
    }

    /// The rows written so far, comma-separated (no enclosing brackets).
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// Appends the decimal digits of `v`.
pub fn write_int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    let mut n = v.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(writer: RowsWriter) -> String {
        String::from_utf8(writer.finish()).unwrap()
    }

    #[test]
    fn rows_are_objects_with_keys_in_order() {
        let mut w = RowsWriter::new(&["peer", "quick_modes", "dpd", "lifetime_left", "share", "cookie"], 64);
        let rows = [
            ("192.0.2.1", 1, true, Cell::Int(7), 0.5, &[0x01u8, 0xab, 0xff][..]),
            ("::1", 0, false, Cell::Null, 1e-7, &[][..]),
        ];
        for (peer, qm, dpd, left, share, cookie) in rows {
            w.start_row();
            w.cell(0, Cell::Str(peer));
            w.cell(1, Cell::Int(qm));
            w.cell(2, Cell::Bool(dpd));
            w.cell(3, left);
            w.cell(4, Cell::Float(share));
            w.cell(5, Cell::Hex(cookie));
            w.end_row();
        }
        assert_eq!(
            text(w),
            r#"{"peer":"192.0.2.1","quick_modes":1,"dpd":true,"lifetime_left":7,"share":0.5,"cookie":"01abff"},{"peer":"::1","quick_modes":0,"dpd":false,"lifetime_left":null,"share":1e-7,"cookie":""}"#
        );
    }

    #[test]
    fn strings_are_escaped_as_rfc_8259_wants() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}e\u{7f}é€");
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\\\c\\nd\\u0001e\u{7f}é€\"");
    }

    #[test]
    fn odd_values_and_shapes() {
        let mut w = RowsWriter::new::<&str>(&[], 8);
        w.start_row();
        w.end_row();
        w.start_row();
        w.end_row();
        assert_eq!(text(w), "{},{}");
        let mut w = RowsWriter::new(&["x\"y"], 8);
        w.start_row();
        w.cell(0, Cell::Float(f64::NAN));
        w.end_row();
        w.start_row();
        w.cell(0, Cell::Int(i64::MIN));
        w.end_row();
        w.start_row();
        w.cell(0, Cell::Int(0));
        w.end_row();
        w.start_row();
        w.cell(0, Cell::Int(i64::MAX));
        w.end_row();
        assert_eq!(text(w), r#"{"x\"y":null},{"x\"y":-9223372036854775808},{"x\"y":0},{"x\"y":9223372036854775807}"#);
        assert_eq!(RowsWriter::new::<&str>(&[], 0).finish(), b"");
    }
}
