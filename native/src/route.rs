//! `operators.stream_messages.route_lines` in Rust: lines → changes grouped by market, parsed
//! once here and handed on as an opaque `MarketChanges` (never as Python dicts).

use std::borrow::Cow;
use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple, PyType};

use crate::json::{self, Json, JsonRef, Node};
use crate::number::Num;
use crate::pickle;
use crate::records::{classes, new_record};
use crate::small_string::SmallString;

const CONTROL_OPS: [&str; 3] = ["connection", "status", "heartbeat"];
/// `MIN_PUBLISH_TIME_MS` / `MAX_PUBLISH_TIME_MS` of `operators.stream_messages`: publish
/// times a day inside `datetime`'s range (0001-01-02 up to 9999-12-31, exclusive).
const MIN_PUBLISH_TIME_MS: i128 = -62_135_510_400_000;
const MAX_PUBLISH_TIME_MS: i128 = 253_402_214_400_000;

/// One `mc` element with the header of the line it came in.
pub struct ChangeItem {
    pub publish_time_ms: i128,
    pub clk: Json,
    /// The `mc` element: always an object with a string `id`.
    pub change: Json,
    pub source: Py<PyAny>,
    pub position: Py<PyAny>,
}

/// One market's changes of a routed batch, in stream order.
///
/// Picklable (Bytewax moves items between workers): the parsed changes travel serialised,
/// sources and positions as the Python objects they are.
#[pyclass(module = "velo_native", frozen)]
pub struct MarketChanges {
    pub market_id: String,
    pub items: Vec<ChangeItem>,
}

#[pymethods]
impl MarketChanges {
    #[getter]
    fn market_id(&self) -> &str {
        &self.market_id
    }

    fn __len__(&self) -> usize {
        self.items.len()
    }

    /// The same changes as `operators.stream_messages.MarketChange` records (for tests and
    /// for code that needs the Python view; the native processor never does this).
    fn as_market_changes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let market_change = &classes(py)?.market_change;
        let list = PyList::empty(py);
        for item in &self.items {
            list.append(new_record(
                py,
                market_change,
                [
                    self.market_id.as_str().into_pyobject(py)?.into_any(),
                    item.publish_time_ms.into_pyobject(py)?.into_any(),
                    item.clk.to_py(py)?,
                    item.change.to_py(py)?,
                    item.source.bind(py).clone(),
                    item.position.bind(py).clone(),
                ],
            )?)?;
        }
        Ok(list)
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let this = slf.get();
        let sources = PyList::new(py, this.items.iter().map(|item| item.source.bind(py)))?;
        let positions = PyList::new(py, this.items.iter().map(|item| item.position.bind(py)))?;
        let parsed: Vec<(i128, &Json, &Json)> = this
            .items
            .iter()
            .map(|item| (item.publish_time_ms, &item.clk, &item.change))
            .collect();
        let state = pickle::to_bytes(&parsed, "cannot pickle changes")?;
        let restore = py.import("velo_native")?.getattr("_restore_changes")?;
        let arguments = (
            this.market_id.as_str(),
            sources,
            positions,
            PyBytes::new(py, &state),
        );
        PyTuple::new(py, [restore, arguments.into_pyobject(py)?.into_any()])
    }
}

/// Rebuild pickled `MarketChanges` (the parsed changes travel as their serialised tapes).
#[pyfunction]
pub fn _restore_changes(
    market_id: String,
    sources: Vec<Py<PyAny>>,
    positions: Vec<Py<PyAny>>,
    state: &[u8],
) -> PyResult<MarketChanges> {
    let parsed: Vec<(i128, Json, Json)> = pickle::from_bytes(state, "corrupt pickled changes")?;
    if parsed.len() != sources.len() || parsed.len() != positions.len() {
        return Err(PyValueError::new_err(
            "corrupt pickled changes: lengths differ",
        ));
    }
    let items = parsed
        .into_iter()
        .zip(sources.into_iter().zip(positions))
        .map(
            |((publish_time_ms, clk, change), (source, position))| ChangeItem {
                publish_time_ms,
                clk,
                change,
                source,
                position,
            },
        )
        .collect();
    Ok(MarketChanges { market_id, items })
}

/// What `_parse` makes of one line.
enum Parsed {
    Skip,
    Bad(&'static str),
    Changes {
        publish_time_ms: i128,
        clk: Json,
        changes: Vec<(SmallString, Json)>,
    },
}

/// `operators.stream_messages._parse`, reason for reason.
fn parse_message(raw: &[u8]) -> Parsed {
    json::with_parsed(raw, |message| {
        let Some(message) = message else {
            return Parsed::Bad("malformed_json");
        };
        if message.as_object().is_none() {
            return Parsed::Bad("not_an_object");
        }
        read_message(message)
    })
}

fn read_message(message: JsonRef<'_>) -> Parsed {
    match message.get("op").and_then(JsonRef::as_str) {
        Some("mcm") => {}
        Some(op) if CONTROL_OPS.contains(&op) => return Parsed::Skip,
        _ => return Parsed::Bad("unknown_op"),
    }
    let publish_time_ms = match message.get("pt").map(JsonRef::node) {
        Some(Node::Num(Num::Int(pt))) => *pt as i128,
        Some(Node::Num(Num::UInt(pt))) => *pt as i128,
        _ => return Parsed::Bad("missing_publish_time"),
    };
    if !(MIN_PUBLISH_TIME_MS..MAX_PUBLISH_TIME_MS).contains(&publish_time_ms) {
        return Parsed::Bad("publish_time_out_of_range");
    }
    let heartbeat = message.get("ct").and_then(JsonRef::as_str) == Some("HEARTBEAT");
    let market_changes = match message.get("mc") {
        None => return Parsed::Skip,
        Some(mc) if matches!(mc.node(), Node::Null) || heartbeat => return Parsed::Skip,
        Some(mc) => match mc.as_list() {
            Some(items) => items,
            None => return Parsed::Bad("malformed_market_changes"),
        },
    };
    let clk = message.get("clk").map_or(Json::NULL, JsonRef::to_owned);
    let mut changes = Vec::with_capacity(market_changes.len());
    for change in market_changes {
        match change.get("id").and_then(JsonRef::as_str) {
            Some(market_id) => changes.push((SmallString::from(market_id), change.to_owned())),
            None => return Parsed::Bad("malformed_market_changes"),
        }
    }
    Parsed::Changes {
        publish_time_ms,
        clk,
        changes,
    }
}

/// The bytes orjson would read from a line's raw value, or `None` for a type it refuses.
fn raw_bytes<'a>(raw: &'a Bound<'_, PyAny>) -> PyResult<Option<Cow<'a, [u8]>>> {
    if let Ok(bytes) = raw.cast::<PyBytes>() {
        return Ok(Some(Cow::Borrowed(bytes.as_bytes())));
    }
    if let Ok(text) = raw.cast::<PyString>() {
        return Ok(Some(Cow::Owned(text.to_str()?.as_bytes().to_vec())));
    }
    if let Ok(array) = raw.cast::<PyByteArray>() {
        return Ok(Some(Cow::Owned(array.to_vec())));
    }
    if raw.get_type().name()? == "memoryview" {
        let copied = raw.py().get_type::<PyBytes>().call1((raw,))?;
        return Ok(Some(Cow::Owned(
            copied.cast::<PyBytes>()?.as_bytes().to_vec(),
        )));
    }
    Ok(None)
}

/// Lines parsed per release of the GIL: long enough that releasing it costs nothing, short
/// enough that a line's parse is still in the cache when its changes are routed.
const PARSE_CHUNK_LINES: usize = 64;

type Line<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>);

/// What became of each line of `chunk`, parsed with the GIL released (other Bytewax workers
/// run meanwhile); `None`: a `BadLine` passed on as it is.
fn parse_chunk(
    py: Python<'_>,
    chunk: &[Line<'_>],
    bad_line: &Bound<'_, PyType>,
) -> Vec<Option<PyResult<Parsed>>> {
    let inputs: Vec<Input<'_>> = chunk
        .iter()
        .map(|(_, _, raw)| {
            if raw.get_type().is(bad_line) {
                return Input::BadLine;
            }
            match raw_bytes(raw) {
                Ok(Some(bytes)) => Input::Bytes(bytes),
                Ok(None) => Input::Unreadable,
                Err(error) => Input::Failed(error),
            }
        })
        .collect();
    py.detach(|| {
        inputs
            .into_iter()
            .map(|input| match input {
                Input::Bytes(bytes) => Some(Ok(parse_message(&bytes))),
                Input::Unreadable => Some(Ok(Parsed::Bad("malformed_json"))),
                Input::Failed(error) => Some(Err(error)),
                Input::BadLine => None,
            })
            .collect()
    })
}

/// One line as handed over: a `BadLine` to pass on, bytes to parse, or why not.
enum Input<'a> {
    BadLine,
    Bytes(Cow<'a, [u8]>),
    /// Not a type orjson reads: dead-lettered as malformed JSON.
    Unreadable,
    /// Reading it raised (a `str` with lone surrogates); raised again in line order.
    Failed(PyErr),
}

/// `route_lines`: `[(source, position, raw bytes | BadLine), ...]` → `RoutedLines` whose
/// values are `MarketChanges`. Parsing releases the GIL (see `parse_chunk`).
#[pyfunction]
pub fn route_lines<'py>(py: Python<'py>, lines: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let classes = classes(py)?;
    let bad_line = classes.bad_line.bind(py);
    let count = lines.len()?;
    let mut unpacked: Vec<Line<'py>> = Vec::with_capacity(count);
    for line in lines.try_iter()? {
        unpacked.push(line?.extract()?);
    }
    let mut markets: Vec<MarketChanges> = Vec::new();
    let mut market_index: HashMap<String, usize> = HashMap::new();
    let bad = PyList::empty(py);
    for chunk in unpacked.chunks(PARSE_CHUNK_LINES) {
        for ((source, position, raw), outcome) in chunk.iter().zip(parse_chunk(py, chunk, bad_line))
        {
            let Some(parsed) = outcome else {
                bad.append(raw)?;
                continue;
            };
            match parsed? {
                Parsed::Skip => {}
                Parsed::Bad(reason) => {
                    let raw = match raw.cast::<PyString>() {
                        Ok(text) => PyBytes::new(py, text.to_str()?.as_bytes()).into_any(),
                        Err(_) => raw.clone(),
                    };
                    bad.append(new_record(
                        py,
                        &classes.bad_line,
                        [
                            source.clone(),
                            position.clone(),
                            reason.into_pyobject(py)?.into_any(),
                            raw,
                        ],
                    )?)?;
                }
                Parsed::Changes {
                    publish_time_ms,
                    clk,
                    changes,
                } => {
                    for (market_id, change) in changes {
                        let item = ChangeItem {
                            publish_time_ms,
                            clk: clk.clone(),
                            change,
                            source: source.clone().unbind(),
                            position: position.clone().unbind(),
                        };
                        match market_index.get(market_id.as_str()) {
                            Some(&index) => markets[index].items.push(item),
                            None => {
                                market_index.insert(market_id.to_string(), markets.len());
                                markets.push(MarketChanges {
                                    market_id: market_id.to_string(),
                                    items: vec![item],
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    let by_market = PyDict::new(py);
    for market in markets {
        let market_id = market.market_id.clone();
        by_market.set_item(market_id, Bound::new(py, market)?)?;
    }
    new_record(
        py,
        &classes.routed_lines,
        [
            by_market.into_any(),
            bad.into_any(),
            count.into_pyobject(py)?.into_any(),
        ],
    )
}
