//! Pickling by serde: a class's state travels as postcard bytes and comes back through a
//! module-level restore function (what `__reduce__` returns).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `value` as postcard bytes; a ValueError starting with `failure` if it cannot be.
pub fn to_bytes<T: Serialize + ?Sized>(value: &T, failure: &str) -> PyResult<Vec<u8>> {
    postcard::to_allocvec(value)
        .map_err(|error| PyValueError::new_err(format!("{failure}: {error}")))
}

/// A value back from `to_bytes`; a ValueError starting with `failure` if the bytes are not one.
pub fn from_bytes<T: DeserializeOwned>(state: &[u8], failure: &str) -> PyResult<T> {
    postcard::from_bytes(state)
        .map_err(|error| PyValueError::new_err(format!("{failure}: {error}")))
}

/// `(velo_native.<restore>, (state as postcard bytes,))`: `__reduce__` of a class whose whole
/// state is `state`.
pub fn reduce<'py, T: Serialize>(
    py: Python<'py>,
    state: &T,
    restore: &str,
    failure: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let bytes = to_bytes(state, failure)?;
    let restore = py.import("velo_native")?.getattr(restore)?;
    PyTuple::new(
        py,
        [
            restore,
            PyTuple::new(py, [PyBytes::new(py, &bytes)])?.into_any(),
        ],
    )
}
