//! The frequent records — runner ticks, market ticks, windows — as Rust rows, handed over
//! either as the NamedTuples of `operators/records.py` or, in COPY mode, as PostgreSQL binary
//! COPY tuples, the records being built only for a consumer that asks for them.
//!
//! Most of the native processor's time used to go into making ~6 Python objects per stream
//! line that the sink then turned straight into bytes; COPY mode writes the bytes directly.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use serde::{Deserialize, Serialize};

use crate::json::{option_num, Json, Node};
use crate::number::Num;
use crate::pickle;
use crate::processor::MarketValues;
use crate::records::{classes, new_record, DatetimeCache, StringCache, UtcTime};
use crate::runner_book::TickValues;
use crate::windows::{Accumulator, ClosedWindow};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunnerTickRow {
    pub market_id: Arc<str>,
    pub selection_id: Json,
    pub handicap: f64,
    pub publish_time: UtcTime,
    pub seq: i64,
    pub values: TickValues,
    pub seconds_to_off: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarketTickRow {
    pub market_id: Arc<str>,
    pub publish_time: UtcTime,
    pub seq: i64,
    pub values: MarketValues,
    pub seconds_to_off: Option<f64>,
}

/// One closed window of one market: a `WindowAggregate` per accumulator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowRows {
    pub market_id: Arc<str>,
    pub window: ClosedWindow,
}

// -- Python records ------------------------------------------------------------------------

/// The last market id converted, reused while rows repeat it (one market per batch).
struct MarketIdCache<'py> {
    last: Option<(Arc<str>, Bound<'py, PyAny>)>,
}

impl<'py> MarketIdCache<'py> {
    fn get(&mut self, py: Python<'py>, market_id: &Arc<str>) -> Bound<'py, PyAny> {
        if let Some((cached, object)) = &self.last {
            if Arc::ptr_eq(cached, market_id) || **cached == **market_id {
                return object.clone();
            }
        }
        let object = PyString::new(py, market_id).into_any();
        self.last = Some((market_id.clone(), object.clone()));
        object
    }
}

pub fn append_runner_ticks(
    py: Python<'_>,
    rows: &[RunnerTickRow],
    out: &Bound<'_, PyList>,
) -> PyResult<()> {
    let class = &classes(py)?.runner_tick;
    let mut market_ids = MarketIdCache { last: None };
    let mut datetimes = DatetimeCache::new();
    let mut statuses = StringCache::new();
    for row in rows {
        let v = &row.values;
        out.append(new_record(
            py,
            class,
            [
                market_ids.get(py, &row.market_id),
                row.selection_id.to_py(py)?,
                row.handicap.into_pyobject(py)?.into_any(),
                datetimes.get(py, row.publish_time)?,
                row.seq.into_pyobject(py)?.into_any(),
                statuses.get(py, &v.status)?,
                v.in_play.into_pyobject(py)?.to_owned().into_any(),
                option_num(py, v.back)?,
                option_num(py, v.back_size)?,
                option_num(py, v.lay)?,
                option_num(py, v.lay_size)?,
                option_num(py, v.ltp)?,
                v.volume.into_pyobject(py)?.into_any(),
                v.spread.into_pyobject(py)?,
                v.wom.map(|wom| wom.value).into_pyobject(py)?,
                v.implied.into_pyobject(py)?,
                v.vwap.into_pyobject(py)?,
                option_num(py, v.spn)?,
                option_num(py, v.spf)?,
                row.seconds_to_off.into_pyobject(py)?,
            ],
        )?)?;
    }
    Ok(())
}

pub fn append_market_ticks(
    py: Python<'_>,
    rows: &[MarketTickRow],
    out: &Bound<'_, PyList>,
) -> PyResult<()> {
    let class = &classes(py)?.market_tick;
    let mut market_ids = MarketIdCache { last: None };
    let mut datetimes = DatetimeCache::new();
    let mut statuses = StringCache::new();
    for row in rows {
        let v = &row.values;
        out.append(new_record(
            py,
            class,
            [
                market_ids.get(py, &row.market_id),
                datetimes.get(py, row.publish_time)?,
                row.seq.into_pyobject(py)?.into_any(),
                statuses.get(py, &v.status)?,
                v.in_play.into_pyobject(py)?.to_owned().into_any(),
                v.total_matched.to_py(py)?,
                v.back_overround.into_pyobject(py)?,
                v.lay_overround.into_pyobject(py)?,
                v.active_runners.into_pyobject(py)?.into_any(),
                row.seconds_to_off.into_pyobject(py)?,
            ],
        )?)?;
    }
    Ok(())
}

pub fn append_windows(
    py: Python<'_>,
    rows: &[WindowRows],
    out: &Bound<'_, PyList>,
) -> PyResult<()> {
    let class = &classes(py)?.window_aggregate;
    let mut market_ids = MarketIdCache { last: None };
    for WindowRows { market_id, window } in rows {
        let market_id = market_ids.get(py, market_id);
        let start = window.start.to_py(py)?;
        let end = window.end.to_py(py)?;
        let seconds = window.seconds.into_pyobject(py)?.into_any();
        for acc in &window.accumulators {
            out.append(new_record(
                py,
                class,
                [
                    market_id.clone(),
                    acc.selection_id.to_py(py)?,
                    acc.handicap.into_pyobject(py)?.into_any(),
                    seconds.clone(),
                    start.clone(),
                    end.clone(),
                    acc.updates.into_pyobject(py)?.into_any(),
                    option_num(py, acc.open)?,
                    option_num(py, acc.high)?,
                    option_num(py, acc.low)?,
                    option_num(py, acc.close)?,
                    acc.price_move_ticks().into_pyobject(py)?,
                    acc.traded.into_pyobject(py)?.into_any(),
                    acc.back_added.into_pyobject(py)?.into_any(),
                    acc.back_removed.into_pyobject(py)?.into_any(),
                    acc.lay_added.into_pyobject(py)?.into_any(),
                    acc.lay_removed.into_pyobject(py)?.into_any(),
                    acc.wom_open.into_pyobject(py)?,
                    acc.wom_close.into_pyobject(py)?,
                ],
            )?)?;
        }
    }
    Ok(())
}

// -- binary COPY ---------------------------------------------------------------------------

/// Why a row cannot be sent the way psycopg would send its record (psycopg would raise, or
/// silently truncate an int4): the caller writes `records()` on its checked path instead.
struct Unencodable(&'static str);

/// One tuple of PostgreSQL's binary COPY format: field count, then per field its length
/// (-1 for NULL) and its bytes, all big-endian — what psycopg's binary dumpers produce for
/// the column types of `sql/migrations` (text, int8, int4, float8, bool, timestamptz).
struct Tuple<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Tuple<'a> {
    fn begin(out: &'a mut Vec<u8>, fields: i16) -> Tuple<'a> {
        out.extend_from_slice(&fields.to_be_bytes());
        Tuple { out }
    }

    fn null(&mut self) {
        self.out.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A fixed-size value (numbers, bool, time): its length, then its bytes.
    fn fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        self.out.extend_from_slice(&(N as i32).to_be_bytes());
        self.out.extend_from_slice(&bytes);
    }

    fn text(&mut self, value: &str) {
        self.out
            .extend_from_slice(&(value.len() as i32).to_be_bytes());
        self.out.extend_from_slice(value.as_bytes());
    }

    /// A string into text; None is NULL, like psycopg.
    fn text_json(&mut self, value: &Json) -> Result<(), Unencodable> {
        match (value.as_str(), value.node()) {
            (Some(text), _) => self.text(text),
            (None, Node::Null) => self.null(),
            _ => return Err(Unencodable("a text column holds a non-string")),
        }
        Ok(())
    }

    fn int8(&mut self, value: i64) {
        self.fixed(value.to_be_bytes());
    }

    /// A Python int (or bool) into int8; None is NULL, like psycopg.
    fn int8_json(&mut self, value: &Json) -> Result<(), Unencodable> {
        match value.node() {
            Node::Num(Num::Int(int)) => self.int8(*int),
            Node::Bool(flag) => self.int8(*flag as i64),
            Node::Null => self.null(),
            Node::Num(Num::UInt(_)) => return Err(Unencodable("int too big for int8")),
            _ => return Err(Unencodable("an int8 column holds a non-integer")),
        }
        Ok(())
    }

    fn int4(&mut self, value: i64) -> Result<(), Unencodable> {
        let value = i32::try_from(value).map_err(|_| Unencodable("integer out of int4 range"))?;
        self.fixed(value.to_be_bytes());
        Ok(())
    }

    fn option_int4(&mut self, value: Option<i64>) -> Result<(), Unencodable> {
        match value {
            Some(value) => return self.int4(value),
            None => self.null(),
        }
        Ok(())
    }

    fn float8(&mut self, value: f64) {
        self.fixed(value.to_be_bytes());
    }

    fn option_float8(&mut self, value: Option<f64>) {
        match value {
            Some(value) => self.float8(value),
            None => self.null(),
        }
    }

    fn option_num(&mut self, value: Option<Num>) {
        self.option_float8(value.map(Num::to_f64));
    }

    /// A number or bool into float8 (`float(value)`).
    fn float8_json(&mut self, value: &Json) -> Result<(), Unencodable> {
        match value.as_ref().numeric() {
            Some(number) => self.float8(number.to_f64()),
            None if matches!(value.node(), Node::Null) => self.null(),
            None => return Err(Unencodable("a float8 column holds a non-number")),
        }
        Ok(())
    }

    fn boolean(&mut self, value: bool) {
        self.fixed([value as u8]);
    }

    fn timestamptz(&mut self, value: UtcTime) {
        self.fixed(value.postgres_microseconds().to_be_bytes());
    }
}

fn encode_runner_tick(row: &RunnerTickRow, out: &mut Vec<u8>) -> Result<(), Unencodable> {
    let v = &row.values;
    let mut tuple = Tuple::begin(out, 20);
    tuple.text(&row.market_id);
    tuple.int8_json(&row.selection_id)?;
    tuple.float8(row.handicap);
    tuple.timestamptz(row.publish_time);
    tuple.int8(row.seq);
    tuple.text_json(&v.status)?;
    tuple.boolean(v.in_play);
    tuple.option_num(v.back);
    tuple.option_num(v.back_size);
    tuple.option_num(v.lay);
    tuple.option_num(v.lay_size);
    tuple.option_num(v.ltp);
    tuple.float8(v.volume);
    tuple.option_int4(v.spread)?;
    tuple.option_float8(v.wom.map(|wom| wom.value));
    tuple.option_float8(v.implied);
    tuple.option_float8(v.vwap);
    tuple.option_num(v.spn);
    tuple.option_num(v.spf);
    tuple.option_float8(row.seconds_to_off);
    Ok(())
}

fn encode_market_tick(row: &MarketTickRow, out: &mut Vec<u8>) -> Result<(), Unencodable> {
    let v = &row.values;
    let mut tuple = Tuple::begin(out, 10);
    tuple.text(&row.market_id);
    tuple.timestamptz(row.publish_time);
    tuple.int8(row.seq);
    tuple.text_json(&v.status)?;
    tuple.boolean(v.in_play);
    tuple.float8_json(&v.total_matched)?;
    tuple.option_float8(v.back_overround);
    tuple.option_float8(v.lay_overround);
    tuple.int4(v.active_runners)?;
    tuple.option_float8(row.seconds_to_off);
    Ok(())
}

fn encode_window(
    rows: &WindowRows,
    acc: &Accumulator,
    out: &mut Vec<u8>,
) -> Result<(), Unencodable> {
    let window = &rows.window;
    let mut tuple = Tuple::begin(out, 19);
    tuple.text(&rows.market_id);
    tuple.int8_json(&acc.selection_id)?;
    tuple.float8(acc.handicap);
    tuple.int4(window.seconds)?;
    tuple.timestamptz(window.start);
    tuple.timestamptz(window.end);
    tuple.int4(acc.updates)?;
    tuple.option_num(acc.open);
    tuple.option_num(acc.high);
    tuple.option_num(acc.low);
    tuple.option_num(acc.close);
    tuple.option_int4(acc.price_move_ticks())?;
    tuple.float8(acc.traded);
    tuple.float8(acc.back_added);
    tuple.float8(acc.back_removed);
    tuple.float8(acc.lay_added);
    tuple.float8(acc.lay_removed);
    tuple.option_float8(acc.wom_open);
    tuple.option_float8(acc.wom_close);
    Ok(())
}

// -- the Python objects ----------------------------------------------------------------------

/// The frequent rows of one or more `process` calls in COPY mode, per table.
///
/// Pass one to `MarketProcessor.process(changes, out, copy_rows)` / `finish(out, copy_rows)`:
/// runner ticks, market ticks, windows and live (not persisted) windows then go here instead
/// of into `out`'s lists; everything else still goes to `out`. Picklable.
#[pyclass(module = "velo_native")]
#[derive(Default, Serialize, Deserialize)]
pub struct CopyRows {
    pub runner_ticks: Vec<RunnerTickRow>,
    pub market_ticks: Vec<MarketTickRow>,
    pub windows: Vec<WindowRows>,
    pub live_windows: Vec<WindowRows>,
}

#[derive(Clone, Copy)]
enum TableKind {
    RunnerTicks,
    MarketTicks,
    Windows,
    LiveWindows,
}

/// One table's rows (live and persisted windows have the same shape).
enum TableRows<'a> {
    RunnerTicks(&'a [RunnerTickRow]),
    MarketTicks(&'a [MarketTickRow]),
    Windows(&'a [WindowRows]),
}

/// The earliest and latest of `times` (the first seen of equal ones).
fn earliest_and_latest(times: impl Iterator<Item = UtcTime>) -> Option<(UtcTime, UtcTime)> {
    times.fold(None, |range, time| match range {
        None => Some((time, time)),
        Some((low, high)) => Some((
            if time.instant() < low.instant() {
                time
            } else {
                low
            },
            if time.instant() > high.instant() {
                time
            } else {
                high
            },
        )),
    })
}

impl CopyRows {
    fn table_rows(&self, kind: TableKind) -> TableRows<'_> {
        match kind {
            TableKind::RunnerTicks => TableRows::RunnerTicks(&self.runner_ticks),
            TableKind::MarketTicks => TableRows::MarketTicks(&self.market_ticks),
            TableKind::Windows => TableRows::Windows(&self.windows),
            TableKind::LiveWindows => TableRows::Windows(&self.live_windows),
        }
    }

    fn count(&self, kind: TableKind) -> usize {
        match self.table_rows(kind) {
            TableRows::RunnerTicks(rows) => rows.len(),
            TableRows::MarketTicks(rows) => rows.len(),
            TableRows::Windows(rows) => rows.iter().map(|r| r.window.accumulators.len()).sum(),
        }
    }

    /// The rows as COPY tuples; an error names the row (in table order) that cannot be encoded.
    fn encode(&self, kind: TableKind) -> Result<Vec<u8>, (usize, Unencodable)> {
        let mut out = Vec::new();
        let numbered = |index: usize| move |error| (index, error);
        match self.table_rows(kind) {
            TableRows::RunnerTicks(rows) => {
                for (index, row) in rows.iter().enumerate() {
                    encode_runner_tick(row, &mut out).map_err(numbered(index))?;
                }
            }
            TableRows::MarketTicks(rows) => {
                for (index, row) in rows.iter().enumerate() {
                    encode_market_tick(row, &mut out).map_err(numbered(index))?;
                }
            }
            TableRows::Windows(rows) => {
                let accumulators = rows.iter().flat_map(|group| {
                    group
                        .window
                        .accumulators
                        .iter()
                        .map(move |acc| (group, acc))
                });
                for (index, (group, acc)) in accumulators.enumerate() {
                    encode_window(group, acc, &mut out).map_err(numbered(index))?;
                }
            }
        }
        Ok(out)
    }

    /// The earliest and latest value of the table's partition column (`publish_time`, or
    /// `window_start` for windows).
    fn time_range(&self, kind: TableKind) -> Option<(UtcTime, UtcTime)> {
        match self.table_rows(kind) {
            TableRows::RunnerTicks(rows) => {
                earliest_and_latest(rows.iter().map(|r| r.publish_time))
            }
            TableRows::MarketTicks(rows) => {
                earliest_and_latest(rows.iter().map(|r| r.publish_time))
            }
            TableRows::Windows(rows) => earliest_and_latest(rows.iter().map(|r| r.window.start)),
        }
    }

    fn records<'py>(&self, py: Python<'py>, kind: TableKind) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        match self.table_rows(kind) {
            TableRows::RunnerTicks(rows) => append_runner_ticks(py, rows, &list)?,
            TableRows::MarketTicks(rows) => append_market_ticks(py, rows, &list)?,
            TableRows::Windows(rows) => append_windows(py, rows, &list)?,
        }
        Ok(list)
    }

    fn table(slf: Py<Self>, kind: TableKind) -> CopyTable {
        CopyTable { rows: slf, kind }
    }
}

#[pymethods]
impl CopyRows {
    #[new]
    fn new() -> CopyRows {
        CopyRows::default()
    }

    #[getter]
    fn runner_ticks(slf: Py<Self>) -> CopyTable {
        CopyRows::table(slf, TableKind::RunnerTicks)
    }

    #[getter]
    fn market_ticks(slf: Py<Self>) -> CopyTable {
        CopyRows::table(slf, TableKind::MarketTicks)
    }

    /// Persisted windows: the `window_aggregates` table.
    #[getter]
    fn windows(slf: Py<Self>) -> CopyTable {
        CopyRows::table(slf, TableKind::Windows)
    }

    /// Closed windows of lengths that are not persisted (for in-flow detectors only).
    #[getter]
    fn live_windows(slf: Py<Self>) -> CopyTable {
        CopyRows::table(slf, TableKind::LiveWindows)
    }

    /// Move another batch's rows to the end of this one's (like `SinkBatch.extend`).
    fn extend(&mut self, other: &Bound<'_, CopyRows>) -> PyResult<()> {
        let mut other = other.try_borrow_mut()?;
        self.runner_ticks.append(&mut other.runner_ticks);
        self.market_ticks.append(&mut other.market_ticks);
        self.windows.append(&mut other.windows);
        self.live_windows.append(&mut other.live_windows);
        Ok(())
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        pickle::reduce(py, self, "_restore_copy_rows", "cannot pickle rows")
    }
}

/// Rebuild pickled `CopyRows`.
#[pyfunction]
pub fn _restore_copy_rows(state: &[u8]) -> PyResult<CopyRows> {
    pickle::from_bytes(state, "corrupt pickled rows")
}

/// One table's rows of a `CopyRows`: `rows`, `data` (binary COPY tuples) and `records()`.
#[pyclass(module = "velo_native", frozen)]
pub struct CopyTable {
    rows: Py<CopyRows>,
    kind: TableKind,
}

#[pymethods]
impl CopyTable {
    /// The table the tuples are laid out for.
    #[getter]
    fn table(&self) -> &'static str {
        match self.kind {
            TableKind::RunnerTicks => "runner_ticks",
            TableKind::MarketTicks => "market_ticks",
            TableKind::Windows | TableKind::LiveWindows => "window_aggregates",
        }
    }

    #[getter]
    fn rows(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.rows.bind(py).try_borrow()?.count(self.kind))
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.rows(py)
    }

    /// The rows as PostgreSQL binary COPY tuples in record field order (no header, no
    /// trailer): exactly what psycopg's binary COPY sends for `records()` with the table's
    /// column types. ValueError where psycopg would refuse or truncate a value; write
    /// `records()` on the checked path then.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let encoded = self.rows.bind(py).try_borrow()?.encode(self.kind);
        match encoded {
            Ok(bytes) => Ok(PyBytes::new(py, &bytes)),
            Err((row, Unencodable(reason))) => Err(PyValueError::new_err(format!(
                "{} row {row} cannot be sent as binary COPY: {reason}",
                self.table()
            ))),
        }
    }

    /// `(earliest, latest)` of the partition column (`publish_time`; `window_start` for
    /// windows) as datetimes, None without rows: the months a COPY needs partitions for.
    fn time_range<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        match self.rows.bind(py).try_borrow()?.time_range(self.kind) {
            Some((low, high)) => Ok(Some((low.to_py(py)?, high.to_py(py)?))),
            None => Ok(None),
        }
    }

    /// The rows as the `operators/records.py` NamedTuples the Python processor makes.
    fn records<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.rows.bind(py).try_borrow()?.records(py, self.kind)
    }
}
