//! Python wrapper for `crate::json_rows`: `json_rows(keys, columns)`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::{ffi, Borrowed};
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString};

use crate::json_rows::{Cell, RowsWriter};

/// The rows held by `columns` (one list per key, all of one length) as JSON objects
/// `{"key": value, ...}` joined by commas, without the enclosing brackets (so that
/// slices of a listing concatenate). Cells are str, int, float, bool or None.
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
    for row in 0..rows {
        writer.start_row();
        for (column, values) in columns.iter().enumerate() {
            // SAFETY: `row` < the list's length (checked above; nothing runs Python code
            // in between), and PyList_GetItem returns a reference borrowed from the list,
            // which `columns` keeps alive: no reference count traffic per cell.
            let value = unsafe {
                let item = ffi::PyList_GetItem(values.as_ptr(), row as ffi::Py_ssize_t);
                if item.is_null() {
                    return Err(PyErr::fetch(py));
                }
                Borrowed::from_ptr(py, item)
            };
            let cell = if value.is_none() {
                Cell::Null
            } else if let Ok(s) = value.cast::<PyString>() {
                writer.cell(column, Cell::Str(s.to_str()?));
                continue;
            } else if let Ok(b) = value.cast::<PyBool>() {
                Cell::Bool(b.is_true())
            } else if let Ok(i) = value.cast::<PyInt>() {
                Cell::Int(i.extract::<i64>()?)
            } else if let Ok(f) = value.cast::<PyFloat>() {
                Cell::Float(f.value())
            } else {
                return Err(PyTypeError::new_err(format!(
                    "json_rows: column {:?} row {row}: cannot encode {}",
                    keys[column],
                    value.get_type().name()?
                )));
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
