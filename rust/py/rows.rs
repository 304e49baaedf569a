//! Python wrapper for `crate::json_rows`: `json_rows(keys, columns)`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::{ffi, Borrowed};
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString};

use crate::json_rows::{Cell, RowsWriter};

/// The rows held by `columns` (one list per key, all of one length) as JSON objects
/// `{"key": value, ...}` joined by commas, without the enclosing brackets (so that
/// slices of a listing concatenate). Cells are str, int, float, bool, None or bytes
/// (written as lowercase hex, as `bytes.hex()` would).
#[pyfunction]
fn json_rows<'py>(py: Python<'py>, keys: Vec<String>, columns: Vec<Bound<'py, PyList>>) -> PyResult<Bound<'py, PyBytes>> {
    if keys.len() != columns.len() {
        return Err(PyValueError::new_err(format!("json_rows: {} keys but {} columns", keys.len(), columns.len())));
    }
    let rows = columns.first().map_or(0, |c| c.len());
    if let Some((i, _)) = columns.iter().enumerate().find(|(_, c)| c.len() != rows) {
        return Err(PyValueError::new_err(format!("json_rows: column {:?} has {} rows, not {rows}", keys[i], columns[i].len())));
    }
    let mut writer = RowsWriter::new(&keys, rows * (keys.len() * 24 + 2));
    // The exact built-in types, compared by address: most cells are one of them, and the
    // comparison saves the type-flag calls of the limited API. Subclasses take the
    // general path below.
    let (str_type, int_type, bool_type, float_type, bytes_type) = (
        &raw mut ffi::PyUnicode_Type,
        &raw mut ffi::PyLong_Type,
        &raw mut ffi::PyBool_Type,
        &raw mut ffi::PyFloat_Type,
        &raw mut ffi::PyBytes_Type,
    );
    let none = py.None();
    for row in 0..rows {
        writer.start_row();
        for (column, values) in columns.iter().enumerate() {
            // SAFETY: `row` < the list's length (checked above; nothing below runs Python
            // code or lets another thread in), and PyList_GetItem returns a reference
            // borrowed from the list, which `columns` keeps alive: no reference counting.
            let item = unsafe { ffi::PyList_GetItem(values.as_ptr(), row as ffi::Py_ssize_t) };
            if item.is_null() {
                return Err(PyErr::fetch(py));
            }
            // SAFETY: `item` is a valid object (above); ob_type is part of the stable ABI.
            let kind = unsafe { ffi::Py_TYPE(item) };
            let cell = if kind == str_type {
                let mut size: ffi::Py_ssize_t = 0;
                // SAFETY: `item` is exactly a str; the UTF-8 buffer lives as long as it.
                let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(item, &mut size) };
                if data.is_null() {
                    return Err(PyErr::fetch(py)); // lone surrogates have no UTF-8
                }
                // SAFETY: Python guarantees `size` bytes of valid UTF-8 at `data`.
                let text = unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(data.cast::<u8>(), size as usize)) };
                Cell::Str(text)
            } else if item == none.as_ptr() {
                Cell::Null
            } else if kind == int_type {
                // SAFETY: `item` is exactly an int.
                let v = unsafe { ffi::PyLong_AsLongLong(item) };
                if v == -1 && !unsafe { ffi::PyErr_Occurred() }.is_null() {
                    return Err(PyErr::fetch(py)); // beyond 64 bits
                }
                Cell::Int(v)
            } else if kind == bool_type {
                Cell::Bool(item == unsafe { ffi::Py_True() })
            } else if kind == float_type {
                // SAFETY: `item` is exactly a float.
                Cell::Float(unsafe { ffi::PyFloat_AsDouble(item) })
            } else if kind == bytes_type {
                let mut data: *mut std::os::raw::c_char = std::ptr::null_mut();
                let mut size: ffi::Py_ssize_t = 0;
                // SAFETY: `item` is exactly a bytes object; its buffer lives as long as it.
                if unsafe { ffi::PyBytes_AsStringAndSize(item, &mut data, &mut size) } < 0 {
                    return Err(PyErr::fetch(py));
                }
                // SAFETY: `size` bytes at `data` (above).
                Cell::Hex(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size as usize) })
            } else {
                // SAFETY: as above; a borrowed view of the cell for the general path.
                let value = unsafe { Borrowed::from_ptr(py, item) };
                if let Ok(s) = value.cast::<PyString>() {
                    writer.cell(column, Cell::Str(s.to_str()?));
                    continue;
                } else if let Ok(b) = value.cast::<PyBool>() {
                    Cell::Bool(b.is_true())
                } else if let Ok(i) = value.cast::<PyInt>() {
                    Cell::Int(i.extract::<i64>()?)
                } else if let Ok(f) = value.cast::<PyFloat>() {
                    Cell::Float(f.value())
                } else if let Ok(b) = value.cast::<PyBytes>() {
                    writer.cell(column, Cell::Hex(b.as_bytes()));
                    continue;
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "json_rows: column {:?} row {row}: cannot encode {}",
                        keys[column],
                        value.get_type().name()?
                    )));
                }
            };
            writer.cell(column, cell);
        }
        writer.end_row();
    }
    Ok(PyBytes::new(py, &writer.finish()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(json_rows, m)?)?;
    Ok(())
}
