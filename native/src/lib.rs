//! `velo_native`: the compiled core of the market operators.
//!
//! `route_lines` and `MarketProcessor` produce exactly what `operators.stream_messages` and
//! `operators.market_processor` produce, record for record and bit for bit; the Python stays
//! the readable reference and the fallback (`operators/native_core.py` chooses).

use pyo3::prelude::*;

mod copy_rows;
mod json;
mod market_book;
mod number;
mod pickle;
mod price_ladder;
mod processor;
mod records;
mod route;
mod runner_book;
mod small_string;
mod windows;

/// `orjson.dumps(orjson.loads(raw)).decode()`, or None where orjson refuses the input: the
/// parser and writer every native record goes through, exposed so tests can pin them.
#[pyfunction]
fn reserialize(raw: &[u8]) -> Option<String> {
    json::with_parsed(raw, |value| {
        let mut text = String::new();
        value?.dump(&mut text);
        Some(text)
    })
}

/// `ms_to_datetime(ms)` of `operators.market_processor`, computed the native way.
#[pyfunction]
fn ms_to_datetime(py: Python<'_>, ms: i128) -> PyResult<Bound<'_, PyAny>> {
    records::UtcTime::from_ms(ms)?.to_py(py)
}

/// The price ladder and `tick_index` as the native core has them, exposed so tests can pin them
/// to `operators.price_ladder`.
#[pyfunction]
#[pyo3(name = "price_ladder")]
fn ladder_prices() -> Vec<f64> {
    price_ladder::prices().to_vec()
}

/// A price as JSON gives it: an int or a float.
#[derive(FromPyObject)]
enum PyPrice {
    Int(i64),
    Float(f64),
}

#[pyfunction]
fn tick_index(price: PyPrice) -> i64 {
    price_ladder::tick_index(match price {
        PyPrice::Int(value) => number::Num::Int(value),
        PyPrice::Float(value) => number::Num::Float(value),
    })
}

#[pymodule]
fn velo_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(route::route_lines, module)?)?;
    module.add_function(wrap_pyfunction!(route::_restore_changes, module)?)?;
    module.add_function(wrap_pyfunction!(processor::_restore_processor, module)?)?;
    module.add_function(wrap_pyfunction!(reserialize, module)?)?;
    module.add_function(wrap_pyfunction!(ms_to_datetime, module)?)?;
    module.add_function(wrap_pyfunction!(ladder_prices, module)?)?;
    module.add_function(wrap_pyfunction!(tick_index, module)?)?;
    module.add_class::<route::MarketChanges>()?;
    module.add_class::<processor::NativeMarketProcessor>()?;
    module.add_class::<copy_rows::CopyRows>()?;
    module.add_class::<copy_rows::CopyTable>()?;
    module.add_function(wrap_pyfunction!(copy_rows::_restore_copy_rows, module)?)?;
    Ok(())
}
