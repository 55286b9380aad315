//! `operators.market_processor.MarketProcessor` in Rust: a market's changes in, the same
//! records out, appended to the same Python `SinkBatch`.

use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use serde::{Deserialize, Serialize};

use crate::copy_rows::{
    append_market_ticks, append_runner_ticks, append_windows, CopyRows, MarketTickRow,
    RunnerTickRow, WindowRows,
};
use crate::json::{num_to_py, option_num, Json, JsonRef, DUMP_MAX_DEPTH};
use crate::market_book::MarketBook;
use crate::number::{Num, Wide};
use crate::pickle;
use crate::records::{classes, new_record, parse_betfair_time, UtcTime};
use crate::route::{ChangeItem, MarketChanges};
use crate::runner_book::Delta;
use crate::windows::{ClosedWindow, MarketWindows};

/// `DeadLetter.raw` keeps this many characters of the change's JSON.
const DEAD_LETTER_CHARS: usize = 10_000;
/// `UNSERIALISABLE_CHANGE` of `operators.market_processor`: `DeadLetter.raw` of a change
/// nested deeper than orjson writes.
const UNSERIALISABLE_CHANGE: &str = "<market change nested too deeply to write as JSON>";

/// The market-wide values of a `MarketTick` (written when they change).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarketValues {
    pub status: Json,
    pub in_play: bool,
    pub total_matched: Json,
    pub back_overround: Option<f64>,
    pub lay_overround: Option<f64>,
    pub active_runners: i64,
}

impl MarketValues {
    fn py_eq(&self, other: &MarketValues) -> bool {
        self.status.py_eq(&other.status)
            && self.in_play == other.in_play
            && self.total_matched.py_eq(&other.total_matched)
            && self.back_overround == other.back_overround
            && self.lay_overround == other.lay_overround
            && self.active_runners == other.active_runners
    }
}

/// The frequent records of one `process` call, kept in Rust until they are handed over.
#[derive(Default)]
pub struct Rows {
    pub runner_ticks: Vec<RunnerTickRow>,
    pub market_ticks: Vec<MarketTickRow>,
    pub windows: Vec<ClosedWindow>,
    pub deltas: Vec<Delta>,
}

/// Everything a processor remembers between batches (what a recovery snapshot holds).
#[derive(Clone, Serialize, Deserialize)]
pub struct ProcessorState {
    /// Shared with every row the processor makes.
    pub market_id: Arc<str>,
    pub keep_deltas: bool,
    seq: i64,
    started: bool,
    last_publish_ms: i128,
    pub book: MarketBook,
    windows: MarketWindows,
    overrounds: (Option<f64>, Option<f64>, i64),
    last_market_values: Option<MarketValues>,
}

/// The `SinkBatch` lists the rare records are appended to, fetched once per call. Held
/// unbound: the processing runs with the GIL released and attaches only to append one of
/// these rare records (definitions, results, dead letters).
struct SinkLists {
    markets: Py<PyList>,
    runners: Py<PyList>,
    results: Py<PyList>,
    dead_letters: Py<PyList>,
}

/// One of a `SinkBatch`'s record lists.
fn batch_list<'py>(batch: &Bound<'py, PyAny>, name: &str) -> PyResult<Bound<'py, PyList>> {
    Ok(batch.getattr(name)?.cast_into::<PyList>()?)
}

impl SinkLists {
    fn of(batch: &Bound<'_, PyAny>) -> PyResult<SinkLists> {
        let list = |name: &str| batch_list(batch, name).map(Bound::unbind);
        Ok(SinkLists {
            markets: list("markets")?,
            runners: list("runners")?,
            results: list("results")?,
            dead_letters: list("dead_letters")?,
        })
    }
}

impl ProcessorState {
    pub fn new(
        market_id: String,
        window_seconds: &[i64],
        persisted_window_seconds: &[i64],
        keep_deltas: bool,
    ) -> PyResult<ProcessorState> {
        let windows = MarketWindows::new(window_seconds, persisted_window_seconds)?;
        let book = MarketBook::new();
        let overrounds = book.overrounds();
        Ok(ProcessorState {
            market_id: Arc::from(market_id),
            keep_deltas,
            seq: 0,
            started: false,
            last_publish_ms: 0,
            book,
            windows,
            overrounds,
            last_market_values: None,
        })
    }

    /// One change, without the GIL (see `SinkLists`).
    fn process_one(
        &mut self,
        item: &ChangeItem,
        rows: &mut Rows,
        sink: &SinkLists,
        messages: &mut i64,
    ) -> PyResult<()> {
        let change = item.change.as_ref();
        let [image, definition] = change.get_many(["img", "marketDefinition"]);
        let image = image.is_some_and(JsonRef::is_truthy);
        if !self.started {
            if !(image || definition.is_some()) {
                return self.dead_letter(item, "unknown_market_before_image", sink);
            }
            self.started = true;
        }
        let mut publish_ms = item.publish_time_ms;
        if publish_ms < self.last_publish_ms {
            // Applied to the book, counted, and windowed at the market's latest event time.
            self.dead_letter(item, "out_of_order_publish_time", sink)?;
            publish_ms = self.last_publish_ms;
        }
        self.last_publish_ms = publish_ms;
        self.seq += 1;
        let seq = self.seq;
        *messages += 1;
        self.windows.advance(publish_ms, &mut rows.windows)?;

        let deltas = if self.keep_deltas {
            Some(&mut rows.deltas)
        } else {
            None
        };
        let applied = self.book.apply(change, deltas)?;
        let mut prices_moved = applied.definition_changed || image;
        if !applied.definition_valid {
            self.dead_letter(item, "invalid_market_definition", sink)?;
        }
        if applied.invalid > 0 {
            self.dead_letter(item, "invalid_ladder_entry", sink)?;
        }
        let publish_time = UtcTime::from_ms(item.publish_time_ms)?;
        let seconds_to_off = self.book.seconds_to_off(publish_ms);
        if let Some(definition) = definition.filter(|_| applied.definition_changed) {
            self.emit_definition(definition, publish_time, sink)?;
        }

        let in_play = self.book.in_play;
        let market_id = &self.market_id;
        for &index in &applied.touched {
            let runner = &mut self.book.runners[index];
            let values = runner.tick_values(in_play)?;
            let changed = match &runner.last_tick {
                None => {
                    prices_moved = true;
                    true
                }
                Some(last) if !last.py_eq(&values) => {
                    prices_moved |= last.best_prices_moved(&values);
                    true
                }
                Some(_) => false,
            };
            if changed {
                runner.last_tick = Some(values.clone());
                rows.runner_ticks.push(RunnerTickRow {
                    market_id: market_id.clone(),
                    selection_id: runner.tick_key.0.clone(),
                    handicap: runner.tick_key.1,
                    publish_time,
                    seq,
                    values,
                    seconds_to_off,
                });
            }
        }
        self.windows.observe(&applied.touched, &self.book);
        if prices_moved {
            self.overrounds = self.book.overrounds();
        }
        let (back_overround, lay_overround, active_runners) = self.overrounds;
        let values = MarketValues {
            status: self.book.status.clone(),
            in_play: self.book.in_play,
            total_matched: self.book.total_matched.clone(),
            back_overround,
            lay_overround,
            active_runners,
        };
        if !self
            .last_market_values
            .as_ref()
            .is_some_and(|last| last.py_eq(&values))
        {
            self.last_market_values = Some(values.clone());
            rows.market_ticks.push(MarketTickRow {
                market_id: market_id.clone(),
                publish_time,
                seq,
                values,
                seconds_to_off,
            });
        }
        Ok(())
    }

    fn emit_definition(
        &self,
        definition: JsonRef<'_>,
        publish_time: UtcTime,
        sink: &SinkLists,
    ) -> PyResult<()> {
        Python::attach(|py| self.emit_definition_records(py, definition, publish_time, sink))
    }

    fn emit_definition_records(
        &self,
        py: Python<'_>,
        definition: JsonRef<'_>,
        publish_time: UtcTime,
        sink: &SinkLists,
    ) -> PyResult<()> {
        let classes = classes(py)?;
        let book = &self.book;
        let field = |key: &str| -> PyResult<Bound<'_, PyAny>> {
            match definition.get(key) {
                Some(value) => value.to_py(py),
                None => Ok(py.None().into_bound(py)),
            }
        };
        let market_time = definition.get("marketTime");
        let bsp_market = definition.get("bspMarket").is_some_and(JsonRef::is_truthy);
        let publish_time = publish_time.to_py(py)?;
        let market_id = self.market_id.as_ref().into_pyobject(py)?.into_any();
        sink.markets.bind(py).append(new_record(
            py,
            &classes.market_row,
            [
                market_id.clone(),
                field("eventId")?,
                field("eventTypeId")?,
                field("marketType")?,
                field("name")?,
                field("eventName")?,
                field("venue")?,
                field("countryCode")?,
                parse_betfair_time(py, market_time.unwrap_or(Json::NULL.as_ref()))?,
                field("numberOfWinners")?,
                book.status.to_py(py)?,
                book.in_play.into_pyobject(py)?.to_owned().into_any(),
                book.bet_delay.to_py(py)?,
                book.version.to_py(py)?,
                bsp_market.into_pyobject(py)?.to_owned().into_any(),
                publish_time.clone(),
            ],
        )?)?;
        for runner in &book.runners {
            sink.runners.bind(py).append(new_record(
                py,
                &classes.runner_row,
                [
                    market_id.clone(),
                    runner.selection_id.to_py(py)?,
                    runner.handicap.into_pyobject(py)?.into_any(),
                    runner.name.to_py(py)?,
                    runner.sort_priority.to_py(py)?,
                    runner.status.to_py(py)?,
                    runner.adjustment_factor.to_py(py)?,
                    parse_betfair_time(py, runner.removal_date.as_ref())?,
                    runner.bsp.to_py(py)?,
                ],
            )?)?;
        }
        if book.status.as_str() == Some("CLOSED") {
            for runner in &book.runners {
                sink.results.bind(py).append(new_record(
                    py,
                    &classes.result_row,
                    [
                        market_id.clone(),
                        runner.selection_id.to_py(py)?,
                        runner.handicap.into_pyobject(py)?.into_any(),
                        runner.status.to_py(py)?,
                        runner.bsp.to_py(py)?,
                        publish_time.clone(),
                    ],
                )?)?;
            }
        }
        Ok(())
    }

    fn dead_letter(&self, item: &ChangeItem, reason: &str, sink: &SinkLists) -> PyResult<()> {
        let mut raw = String::new();
        if item.change.as_ref().depth() > DUMP_MAX_DEPTH {
            raw.push_str(UNSERIALISABLE_CHANGE);
        } else {
            item.change.dump(&mut raw);
            if let Some((cut, _)) = raw.char_indices().nth(DEAD_LETTER_CHARS) {
                raw.truncate(cut);
            }
        }
        let recorded_time = UtcTime::from_ms(item.publish_time_ms)?;
        Python::attach(|py| {
            sink.dead_letters.bind(py).append(new_record(
                py,
                &classes(py)?.dead_letter,
                [
                    item.source.bind(py).clone(),
                    item.position.bind(py).clone(),
                    reason.into_pyobject(py)?.into_any(),
                    raw.into_pyobject(py)?.into_any(),
                    recorded_time.to_py(py)?,
                ],
            )?)
        })
    }

    fn snapshots<'py>(&self, py: Python<'py>, out: &Bound<'py, PyList>) -> PyResult<()> {
        let ladder =
            |levels: &mut dyn Iterator<Item = &(Num, Num)>| -> PyResult<Bound<'py, PyList>> {
                let list = PyList::empty(py);
                for (price, size) in levels {
                    list.append(PyList::new(
                        py,
                        [
                            num_to_py(py, *price)?,
                            size.to_f64().into_pyobject(py)?.into_any(),
                        ],
                    )?)?;
                }
                Ok(list)
            };
        for runner in &self.book.runners {
            let snapshot = PyDict::new(py);
            snapshot.set_item("market_id", self.market_id.as_ref())?;
            snapshot.set_item("selection_id", runner.selection_id.to_py(py)?)?;
            snapshot.set_item("handicap", runner.handicap)?;
            snapshot.set_item("status", runner.status.to_py(py)?)?;
            snapshot.set_item("bsp", runner.bsp.to_py(py)?)?;
            snapshot.set_item("ltp", option_num(py, runner.ltp)?)?;
            snapshot.set_item("total_matched", runner.total_matched.to_f64())?;
            snapshot.set_item("atb", ladder(&mut runner.atb.levels.iter().rev())?)?;
            snapshot.set_item("atl", ladder(&mut runner.atl.levels.iter())?)?;
            snapshot.set_item("trd", ladder(&mut runner.trd.levels.iter())?)?;
            out.append(snapshot)?;
        }
        Ok(())
    }
}

/// Append `rows` to `into`, without moving them when `into` is empty (the usual case: the
/// rows were taken from it at the start of the call).
fn move_rows<T>(into: &mut Vec<T>, mut rows: Vec<T>) {
    if into.is_empty() {
        *into = rows;
    } else {
        into.append(&mut rows);
    }
}

impl Rows {
    /// Hand the rows over: into `copy_rows` (COPY mode, whose tick rows these already are) or
    /// as records into `batch`'s lists.
    fn hand_over(
        self,
        py: Python<'_>,
        state: &ProcessorState,
        batch: &Bound<'_, PyAny>,
        copy_rows: Option<&Bound<'_, CopyRows>>,
    ) -> PyResult<()> {
        let market_id = &state.market_id;
        let (windows, live_windows): (Vec<_>, Vec<_>) = self
            .windows
            .into_iter()
            .map(|window| WindowRows {
                market_id: market_id.clone(),
                window,
            })
            .partition(|rows| rows.window.persisted);
        let list = |name: &str| batch_list(batch, name);
        match copy_rows {
            Some(copy_rows) => {
                let mut copy_rows = copy_rows.try_borrow_mut()?;
                move_rows(&mut copy_rows.runner_ticks, self.runner_ticks);
                move_rows(&mut copy_rows.market_ticks, self.market_ticks);
                copy_rows.windows.extend(windows);
                copy_rows.live_windows.extend(live_windows);
            }
            None => {
                append_runner_ticks(py, &self.runner_ticks, &list("runner_ticks")?)?;
                append_market_ticks(py, &self.market_ticks, &list("market_ticks")?)?;
                append_windows(py, &windows, &list("windows")?)?;
                append_windows(py, &live_windows, &list("live_windows")?)?;
            }
        }
        if !self.deltas.is_empty() {
            let deltas = list("deltas")?;
            let class = &classes(py)?.ladder_delta;
            for delta in self.deltas {
                let runner = &state.book.runners[delta.runner];
                deltas.append(new_record(
                    py,
                    class,
                    [
                        runner.selection_id.to_py(py)?,
                        runner.handicap.into_pyobject(py)?.into_any(),
                        delta.side.name().into_pyobject(py)?.into_any(),
                        num_to_py(py, delta.price)?,
                        match delta.size_delta {
                            Wide::Int(int) => int.into_pyobject(py)?.into_any(),
                            Wide::Float(float) => float.into_pyobject(py)?.into_any(),
                        },
                    ],
                )?)?;
            }
        }
        Ok(())
    }
}

/// Order book, windows and record emission for one market, in Rust (same interface and
/// output as `operators.market_processor.MarketProcessor`).
#[pyclass(module = "velo_native", name = "MarketProcessor")]
pub struct NativeMarketProcessor {
    pub state: ProcessorState,
}

fn int_lengths(values: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    values
        .try_iter()?
        .map(|value| {
            value?
                .extract::<i64>()
                .map_err(|_| PyTypeError::new_err(format!("{what} must be whole seconds (ints)")))
        })
        .collect()
}

#[pymethods]
impl NativeMarketProcessor {
    #[new]
    /// The window lengths have no defaults here: `operators.native_core` passes the Python
    /// ones (`operators.windows`), the single place they are defined.
    #[pyo3(signature = (market_id, window_seconds, persisted_window_seconds, keep_deltas = false))]
    fn new(
        market_id: String,
        window_seconds: &Bound<'_, PyAny>,
        persisted_window_seconds: &Bound<'_, PyAny>,
        keep_deltas: bool,
    ) -> PyResult<Self> {
        let window_seconds = int_lengths(window_seconds, "window_seconds")?;
        let persisted = int_lengths(persisted_window_seconds, "persisted_window_seconds")?;
        Ok(NativeMarketProcessor {
            state: ProcessorState::new(market_id, &window_seconds, &persisted, keep_deltas)?,
        })
    }

    #[getter]
    fn market_id(&self) -> &str {
        &self.state.market_id
    }

    #[getter]
    fn keep_deltas(&self) -> bool {
        self.state.keep_deltas
    }

    /// Apply the market's changes in order; records go to `out` (a new `SinkBatch` if None),
    /// except that with `copy_rows` the ticks and windows go there (see `CopyRows`).
    #[pyo3(signature = (changes, out = None, copy_rows = None))]
    fn process<'py>(
        &mut self,
        py: Python<'py>,
        changes: &Bound<'py, PyAny>,
        out: Option<Bound<'py, PyAny>>,
        copy_rows: Option<&Bound<'py, CopyRows>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let changes = changes.cast::<MarketChanges>().map_err(|_| {
            PyTypeError::new_err("the native processor takes velo_native.route_lines output")
        })?;
        let batch = match out {
            Some(batch) => batch,
            None => classes(py)?.sink_batch.bind(py).call0()?,
        };
        let sink = SinkLists::of(&batch)?;
        let mut rows = Rows::default();
        if let Some(copy_rows) = copy_rows {
            // Tick rows go straight into the COPY buffers (they are large to move twice).
            let mut copy_rows = copy_rows.try_borrow_mut()?;
            rows.runner_ticks = std::mem::take(&mut copy_rows.runner_ticks);
            rows.market_ticks = std::mem::take(&mut copy_rows.market_ticks);
        }
        let items = &changes.get().items;
        let state = &mut self.state;
        // The book, windows and rows are Rust alone: other Bytewax workers run meanwhile.
        let (result, messages) = py.detach(|| {
            let mut messages = 0;
            for item in items {
                if let Err(error) = state.process_one(item, &mut rows, &sink, &mut messages) {
                    return (Err(error), messages);
                }
            }
            (Ok(()), messages)
        });
        rows.hand_over(py, &self.state, &batch, copy_rows)?;
        let counted: i64 = batch.getattr("messages")?.extract()?;
        batch.setattr("messages", counted + messages)?;
        result.map(|()| batch)
    }

    /// End of stream: close open windows and add the per-runner final snapshot (windows go
    /// to `copy_rows` when given).
    #[pyo3(signature = (out, copy_rows = None))]
    fn finish<'py>(
        &mut self,
        py: Python<'py>,
        out: Bound<'py, PyAny>,
        copy_rows: Option<&Bound<'py, CopyRows>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut rows = Rows::default();
        self.state.windows.flush(&mut rows.windows)?;
        rows.hand_over(py, &self.state, &out, copy_rows)?;
        self.state.snapshots(py, &batch_list(&out, "snapshots")?)?;
        Ok(out)
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        pickle::reduce(
            py,
            &self.state,
            "_restore_processor",
            "cannot snapshot processor",
        )
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> NativeMarketProcessor {
        NativeMarketProcessor {
            state: self.state.clone(),
        }
    }
}

/// Rebuild a pickled processor.
#[pyfunction]
pub fn _restore_processor(state: &[u8]) -> PyResult<NativeMarketProcessor> {
    let state = pickle::from_bytes(state, "corrupt processor snapshot")?;
    Ok(NativeMarketProcessor { state })
}
