//! Event-time tumbling windows: `operators/windows.py` in Rust (same boundaries, same
//! accumulation order, same emission order).

use pyo3::exceptions::PyValueError;
use pyo3::PyResult;
use serde::{Deserialize, Serialize};

use crate::json::Json;
use crate::market_book::MarketBook;
use crate::number::Num;
use crate::price_ladder::ticks_between;
use crate::records::UtcTime;

/// One window's `WindowAggregate` under construction, in its field order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Accumulator {
    pub selection_id: Json,
    pub handicap: f64,
    pub updates: i64,
    pub open: Option<Num>,
    pub high: Option<Num>,
    pub low: Option<Num>,
    pub close: Option<Num>,
    pub traded: f64,
    pub back_added: f64,
    pub back_removed: f64,
    pub lay_added: f64,
    pub lay_removed: f64,
    pub wom_open: Option<f64>,
    pub wom_close: Option<f64>,
}

impl Accumulator {
    /// The price move in ladder ticks from the window's first to its last price.
    pub fn price_move_ticks(&self) -> Option<i64> {
        Some(ticks_between(self.open?, self.close?))
    }
}

/// All accumulators of one window that just closed, in first-seen order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClosedWindow {
    pub seconds: i64,
    pub persisted: bool,
    pub start: UtcTime,
    pub end: UtcTime,
    pub accumulators: Vec<Accumulator>,
}

const NO_SLOT: u32 = u32::MAX;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Window {
    seconds: i64,
    persisted: bool,
    /// End of the open window; `None` before the first message (the Python's -inf).
    end_ms: Option<i128>,
    accumulators: Vec<Accumulator>,
    /// Per runner index: its accumulator's position, or `NO_SLOT`.
    runner_slots: Vec<u32>,
    market_slot: Option<usize>,
}

impl Window {
    fn length_ms(&self) -> i128 {
        self.seconds as i128 * 1000
    }

    /// Hand over the window's accumulators; its bounds become datetimes here, where the
    /// Python makes them (and raises for a time out of datetime's range).
    fn close(&mut self, start_ms: i128, closed: &mut Vec<ClosedWindow>) -> PyResult<()> {
        if self.accumulators.is_empty() {
            return Ok(());
        }
        let start = UtcTime::from_ms(start_ms)?;
        let end = UtcTime::from_ms(start_ms + self.length_ms())?;
        self.runner_slots.fill(NO_SLOT);
        self.market_slot = None;
        // The next window of this length has about as many accumulators.
        let next = Vec::with_capacity(self.accumulators.len());
        closed.push(ClosedWindow {
            seconds: self.seconds,
            persisted: self.persisted,
            start,
            end,
            accumulators: std::mem::replace(&mut self.accumulators, next),
        });
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarketWindows {
    windows: Vec<Window>,
    /// The earliest window end (`None`: -inf); messages before it close nothing.
    next_end_ms: Option<i128>,
}

pub const MARKET_SELECTION_ID: i64 = 0;
/// `MAX_WINDOW_SECONDS` of `operators.windows`.
const MAX_WINDOW_SECONDS: i64 = 86_400;

impl MarketWindows {
    /// Lengths are de-duplicated and sorted; each must be positive and at most a day.
    pub fn new(window_seconds: &[i64], persisted_seconds: &[i64]) -> PyResult<MarketWindows> {
        if window_seconds.is_empty()
            || window_seconds
                .iter()
                .any(|s| !(1..=MAX_WINDOW_SECONDS).contains(s))
        {
            return Err(PyValueError::new_err(format!(
                "window lengths must be positive seconds, at most {MAX_WINDOW_SECONDS}, \
                 got {window_seconds:?}"
            )));
        }
        let mut lengths = window_seconds.to_vec();
        lengths.sort_unstable();
        lengths.dedup();
        Ok(MarketWindows {
            windows: lengths
                .into_iter()
                .map(|seconds| Window {
                    seconds,
                    persisted: persisted_seconds.contains(&seconds),
                    end_ms: None,
                    accumulators: Vec::new(),
                    runner_slots: Vec::new(),
                    market_slot: None,
                })
                .collect(),
            next_end_ms: None,
        })
    }

    /// Close every window that ends at or before `publish_time_ms`.
    pub fn advance(
        &mut self,
        publish_time_ms: i128,
        closed: &mut Vec<ClosedWindow>,
    ) -> PyResult<()> {
        if self.next_end_ms.is_some_and(|next| publish_time_ms < next) {
            return Ok(());
        }
        let mut next_end: Option<i128> = None;
        for window in &mut self.windows {
            let end = match window.end_ms {
                Some(end) if publish_time_ms < end => end,
                previous => {
                    let length = window.length_ms();
                    if let Some(end) = previous {
                        window.close(end - length, closed)?;
                    }
                    let end = publish_time_ms - publish_time_ms.rem_euclid(length) + length;
                    window.end_ms = Some(end);
                    end
                }
            };
            next_end = Some(next_end.map_or(end, |next| next.min(end)));
        }
        self.next_end_ms = next_end;
        Ok(())
    }

    /// Add what one message did to each touched runner, and to the market, to every window.
    pub fn observe(&mut self, touched: &[usize], book: &MarketBook) {
        let Some((&first, others)) = touched.split_first() else {
            return;
        };
        for &index in touched {
            let runner = &book.runners[index];
            let price = runner.ltp.or(runner.best_back);
            let wom = runner.wom.map(|wom| wom.value);
            for window in &mut self.windows {
                if window.runner_slots.len() <= index {
                    window.runner_slots.resize(index + 1, NO_SLOT);
                }
                let slot = window.runner_slots[index];
                if slot == NO_SLOT {
                    window.runner_slots[index] = window.accumulators.len() as u32;
                    window.accumulators.push(Accumulator {
                        selection_id: runner.tick_key.0.clone(),
                        handicap: runner.tick_key.1,
                        updates: 1,
                        open: price,
                        high: price,
                        low: price,
                        close: price,
                        traded: runner.moved_traded,
                        back_added: runner.moved_back_added,
                        back_removed: runner.moved_back_removed,
                        lay_added: runner.moved_lay_added,
                        lay_removed: runner.moved_lay_removed,
                        wom_open: wom,
                        wom_close: wom,
                    });
                    continue;
                }
                let acc = &mut window.accumulators[slot as usize];
                acc.updates += 1;
                if let Some(price) = price {
                    match (acc.open, acc.high, acc.low) {
                        (Some(_), Some(high), Some(low)) => {
                            if price.py_cmp(high).is_gt() {
                                acc.high = Some(price);
                            }
                            if price.py_cmp(low).is_lt() {
                                acc.low = Some(price);
                            }
                        }
                        _ => {
                            acc.open = Some(price);
                            acc.high = Some(price);
                            acc.low = Some(price);
                        }
                    }
                    acc.close = Some(price);
                }
                // Moves are >= 0 and sums never -0.0, so the Python skips adding zeros.
                if runner.moved_traded != 0.0 {
                    acc.traded += runner.moved_traded;
                }
                if runner.moved_back_added != 0.0 {
                    acc.back_added += runner.moved_back_added;
                }
                if runner.moved_back_removed != 0.0 {
                    acc.back_removed += runner.moved_back_removed;
                }
                if runner.moved_lay_added != 0.0 {
                    acc.lay_added += runner.moved_lay_added;
                }
                if runner.moved_lay_removed != 0.0 {
                    acc.lay_removed += runner.moved_lay_removed;
                }
                if let Some(wom) = wom {
                    if acc.wom_open.is_none() {
                        acc.wom_open = Some(wom);
                    }
                    acc.wom_close = Some(wom);
                }
            }
        }

        let first = &book.runners[first];
        let mut traded = first.moved_traded;
        let mut back_added = first.moved_back_added;
        let mut back_removed = first.moved_back_removed;
        let mut lay_added = first.moved_lay_added;
        let mut lay_removed = first.moved_lay_removed;
        for &index in others {
            let runner = &book.runners[index];
            traded += runner.moved_traded;
            back_added += runner.moved_back_added;
            back_removed += runner.moved_back_removed;
            lay_added += runner.moved_lay_added;
            lay_removed += runner.moved_lay_removed;
        }
        for window in &mut self.windows {
            match window.market_slot {
                None => {
                    window.market_slot = Some(window.accumulators.len());
                    window.accumulators.push(Accumulator {
                        selection_id: Json::num(Num::Int(MARKET_SELECTION_ID)),
                        handicap: 0.0,
                        updates: 1,
                        open: None,
                        high: None,
                        low: None,
                        close: None,
                        traded,
                        back_added,
                        back_removed,
                        lay_added,
                        lay_removed,
                        wom_open: None,
                        wom_close: None,
                    });
                }
                Some(slot) => {
                    let acc = &mut window.accumulators[slot];
                    acc.updates += 1;
                    acc.traded += traded;
                    acc.back_added += back_added;
                    acc.back_removed += back_removed;
                    acc.lay_added += lay_added;
                    acc.lay_removed += lay_removed;
                }
            }
        }
    }

    /// Close all open windows (end of stream).
    pub fn flush(&mut self, closed: &mut Vec<ClosedWindow>) -> PyResult<()> {
        for window in &mut self.windows {
            if let Some(end) = window.end_ms.take() {
                let length = window.length_ms();
                window.close(end - length, closed)?;
            }
        }
        self.next_end_ms = None;
        Ok(())
    }
}
