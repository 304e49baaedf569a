//! Cookie table: (CKY-I, CKY-R) -> SA handle.
