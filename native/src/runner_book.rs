//! One runner's order book: `operators/runner_book.py` in Rust.
//!
//! Full-depth ladders are sorted vectors (the Python keeps a dict plus a sorted price list),
//! numbers keep their JSON type (an int size stays an int), and every derived value is
//! computed in the Python's order so floats come out bit for bit the same.

use pyo3::exceptions::{PyKeyError, PyZeroDivisionError};
use pyo3::prelude::*;
use serde::{Deserialize, Serialize};

use crate::json::{Json, JsonRef, Node};
use crate::number::{Num, Wide};
use crate::price_ladder::ticks_between;

/// A full-depth ladder `{price: size}` kept sorted by price: the Python's dict plus its
/// sorted price list in one. Prices keep the object (int or float) that first created them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ladder {
    pub levels: Vec<(Num, Num)>,
}

impl Ladder {
    fn search(&self, price: Num) -> Result<usize, usize> {
        self.levels
            .binary_search_by(|(level, _)| level.py_cmp(price))
    }

    /// `ladder[price] = size`, or `del` for a zero size; returns the old size (0.0 if none).
    fn set(&mut self, price: Num, size: Num) -> Num {
        match (size.is_nonzero(), self.search(price)) {
            (true, Ok(index)) => std::mem::replace(&mut self.levels[index].1, size),
            (true, Err(index)) => {
                self.levels.insert(index, (price, size));
                Num::Float(0.0)
            }
            (false, Ok(index)) => self.levels.remove(index).1,
            (false, Err(_)) => Num::Float(0.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Back,
    Lay,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Back => "back",
            Side::Lay => "lay",
        }
    }
}

/// `LadderDelta` before it becomes a record (the runner is an index into the book).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delta {
    pub runner: usize,
    pub side: Side,
    pub price: Num,
    pub size_delta: Wide,
}

/// A validated `[price, size]` ladder entry, or `None` for an invalid one (anything that is
/// not a two-item list of non-negative numbers fails the Python's unpacking or checks).
fn price_size(entry: JsonRef<'_>) -> Option<(Num, Num)> {
    let mut items = entry.as_list().filter(|items| items.len() == 2)?;
    let price = items.next()?.as_num()?;
    let size = items.next()?.as_num()?;
    (price.is_non_negative() && size.is_non_negative()).then_some((price, size))
}

fn valid_number(value: JsonRef<'_>) -> Option<Num> {
    value.as_num().filter(|number| number.is_non_negative())
}

/// `(status, in_play, back, back size, lay, lay size, ltp, volume, spread, wom, implied,
/// vwap, spn, spf)`: a runner tick's values, compared with Python's `!=` to decide whether a
/// tick row is written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TickValues {
    pub status: Json,
    pub in_play: bool,
    pub back: Option<Num>,
    pub back_size: Option<Num>,
    pub lay: Option<Num>,
    pub lay_size: Option<Num>,
    pub ltp: Option<Num>,
    pub volume: f64,
    pub spread: Option<i64>,
    pub wom: Option<Wom>,
    pub implied: Option<f64>,
    pub vwap: Option<f64>,
    pub spn: Option<Num>,
    pub spf: Option<Num>,
}

/// The weight of money with the identity of the Python float object that holds it: a NaN
/// (∞/∞ on absurd sizes) equals itself in a tuple comparison only while it is the same object.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Wom {
    pub value: f64,
    pub object: u64,
}

fn option_num_eq(a: Option<Num>, b: Option<Num>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x.py_eq(y),
        _ => false,
    }
}

impl TickValues {
    /// The Python tuple comparison `last == values`.
    pub fn py_eq(&self, other: &TickValues) -> bool {
        let wom_eq = match (self.wom, other.wom) {
            (None, None) => true,
            (Some(a), Some(b)) => a.value == b.value || (a.object == b.object && a.value.is_nan()),
            _ => false,
        };
        self.status.py_eq(&other.status)
            && self.in_play == other.in_play
            && option_num_eq(self.back, other.back)
            && option_num_eq(self.back_size, other.back_size)
            && option_num_eq(self.lay, other.lay)
            && option_num_eq(self.lay_size, other.lay_size)
            && option_num_eq(self.ltp, other.ltp)
            && self.volume == other.volume
            && self.spread == other.spread
            && wom_eq
            && self.implied == other.implied
            && self.vwap == other.vwap
            && option_num_eq(self.spn, other.spn)
            && option_num_eq(self.spf, other.spf)
    }

    pub fn best_prices_moved(&self, other: &TickValues) -> bool {
        !option_num_eq(self.back, other.back) || !option_num_eq(self.lay, other.lay)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunnerBook {
    pub selection_id: Json,
    pub handicap: f64,
    pub status: Json,
    pub name: Json,
    pub sort_priority: Json,
    pub adjustment_factor: Json,
    pub removal_date: Json,
    pub bsp: Json,
    pub touched_in: i64,
    /// `(id, hc)` exactly as the message that touched the runner spelled them.
    pub tick_key: (Json, f64),
    pub moved_traded: f64,
    pub moved_back_added: f64,
    pub moved_back_removed: f64,
    pub moved_lay_added: f64,
    pub moved_lay_removed: f64,
    spread_back: Option<Num>,
    spread_lay: Option<Num>,
    spread: Option<i64>,
    pub atb: Ladder,
    pub atl: Ladder,
    batb_top: Option<(Num, Num)>,
    batl_top: Option<(Num, Num)>,
    pub trd: Ladder,
    trd_volume: f64,
    trd_notional: f64,
    pub ltp: Option<Num>,
    pub total_matched: Num,
    spn: Option<Num>,
    spf: Option<Num>,
    pub best_back: Option<Num>,
    pub best_lay: Option<Num>,
    top_back_size: Wide,
    top_lay_size: Wide,
    top_back_stale: bool,
    top_lay_stale: bool,
    pub wom: Option<Wom>,
    /// Counts the weight-of-money floats made, to tell them apart (see `Wom`).
    wom_objects: u64,
    pub last_tick: Option<TickValues>,
}

impl RunnerBook {
    pub fn new(selection_id: Json, handicap: f64) -> RunnerBook {
        RunnerBook {
            tick_key: (selection_id.clone(), handicap),
            selection_id,
            handicap,
            status: Json::str("ACTIVE"),
            name: Json::NULL,
            sort_priority: Json::NULL,
            adjustment_factor: Json::NULL,
            removal_date: Json::NULL,
            bsp: Json::NULL,
            touched_in: -1,
            moved_traded: 0.0,
            moved_back_added: 0.0,
            moved_back_removed: 0.0,
            moved_lay_added: 0.0,
            moved_lay_removed: 0.0,
            spread_back: None,
            spread_lay: None,
            spread: None,
            atb: Ladder::default(),
            atl: Ladder::default(),
            batb_top: None,
            batl_top: None,
            trd: Ladder::default(),
            trd_volume: 0.0,
            trd_notional: 0.0,
            ltp: None,
            total_matched: Num::Float(0.0),
            spn: None,
            spf: None,
            best_back: None,
            best_lay: None,
            top_back_size: Wide::ZERO_FLOAT,
            top_lay_size: Wide::ZERO_FLOAT,
            top_back_stale: false,
            top_lay_stale: false,
            wom: None,
            wom_objects: 0,
            last_tick: None,
        }
    }

    /// Forget all price data (an `img` replaces the runner's state).
    pub fn clear_prices(&mut self) {
        self.atb.levels.clear();
        self.atl.levels.clear();
        self.batb_top = None;
        self.batl_top = None;
        self.trd.levels.clear();
        self.trd_volume = 0.0;
        self.trd_notional = 0.0;
        self.ltp = None;
        self.total_matched = Num::Float(0.0);
        self.spn = None;
        self.spf = None;
        self.best_back = None;
        self.best_lay = None;
        self.top_back_size = Wide::ZERO_FLOAT;
        self.top_lay_size = Wide::ZERO_FLOAT;
        self.top_back_stale = false;
        self.top_lay_stale = false;
        self.wom = None;
    }

    /// Apply one `rc` element (keys in their order); returns the invalid entry count.
    pub fn apply(
        &mut self,
        index: usize,
        rc: JsonRef<'_>,
        mut deltas: Option<&mut Vec<Delta>>,
    ) -> u64 {
        let mut invalid = 0;
        let mut back_levels = false;
        let mut lay_levels = false;
        for (key, value) in rc.as_object().expect("runner changes are objects") {
            match key {
                "atb" => {
                    let (bad, added, removed) = apply_full(
                        &mut self.atb,
                        value,
                        index,
                        Side::Back,
                        deltas.as_deref_mut(),
                    );
                    invalid += bad;
                    self.moved_back_added += added;
                    self.moved_back_removed += removed;
                    back_levels = true;
                    self.top_back_stale = true;
                }
                "atl" => {
                    let (bad, added, removed) = apply_full(
                        &mut self.atl,
                        value,
                        index,
                        Side::Lay,
                        deltas.as_deref_mut(),
                    );
                    invalid += bad;
                    self.moved_lay_added += added;
                    self.moved_lay_removed += removed;
                    lay_levels = true;
                    self.top_lay_stale = true;
                }
                "trd" => invalid += self.apply_traded(value),
                "ltp" => match valid_number(value) {
                    Some(number) => self.ltp = Some(number),
                    None => invalid += 1,
                },
                "tv" => match valid_number(value) {
                    Some(number) => self.total_matched = number,
                    None => invalid += 1,
                },
                "spn" => self.spn = valid_number(value),
                "spf" => self.spf = valid_number(value),
                "spb" | "spl" => invalid += count_invalid_prices(value),
                "batb" => {
                    invalid += apply_levels(Some(&mut self.batb_top), value);
                    back_levels = true;
                }
                "batl" => {
                    invalid += apply_levels(Some(&mut self.batl_top), value);
                    lay_levels = true;
                }
                "bdatb" | "bdatl" => invalid += apply_levels(None, value),
                _ => {}
            }
        }
        if back_levels {
            self.best_back = match self.atb.levels.last() {
                Some((price, _)) => Some(*price),
                None => self.batb_top.map(|(price, _)| price),
            };
        }
        if lay_levels {
            self.best_lay = match self.atl.levels.first() {
                Some((price, _)) => Some(*price),
                None => self.batl_top.map(|(price, _)| price),
            };
        }
        invalid
    }

    fn apply_traded(&mut self, entries: JsonRef<'_>) -> u64 {
        let Some(entries) = entries.as_list() else {
            return 1;
        };
        let mut added = 0.0;
        let mut invalid = 0;
        for entry in entries {
            let Some((price, size)) = price_size(entry) else {
                invalid += 1;
                continue;
            };
            let old = self.trd.set(price, size);
            let change = size.wide().sub(old.wide());
            self.trd_volume += change.to_f64();
            self.trd_notional += change.mul_to_f64(price.wide());
            if change.is_positive() {
                added += change.to_f64();
            }
        }
        self.moved_traded += added;
        invalid
    }

    /// The values of a `RunnerTick` from `status` to `spf`; updates the cached spread and
    /// weight of money like the Python's `tick_values`.
    pub fn tick_values(&mut self, in_play: bool) -> PyResult<TickValues> {
        let back = self.best_back;
        let lay = self.best_lay;
        let back_size = level_size(back, self.atb.levels.last(), self.batb_top)?;
        let lay_size = level_size(lay, self.atl.levels.first(), self.batl_top)?;
        if !option_num_eq(back, self.spread_back) || !option_num_eq(lay, self.spread_lay) {
            self.spread_back = back;
            self.spread_lay = lay;
            self.spread = match (back, lay) {
                (Some(b), Some(l)) => Some(ticks_between(b, l)),
                _ => None,
            };
        }
        if self.top_back_stale || self.top_lay_stale {
            self.wom = self.weight_of_money();
        }
        let implied = match (back, lay) {
            (Some(b), Some(l)) => Some(0.5 * (reciprocal(b)? + reciprocal(l)?)),
            (Some(b), None) => Some(reciprocal(b)?),
            (None, Some(l)) => Some(reciprocal(l)?),
            (None, None) => match self.ltp {
                Some(ltp) if ltp.is_nonzero() => Some(1.0 / ltp.to_f64()),
                _ => None,
            },
        };
        let volume = self.trd_volume;
        Ok(TickValues {
            status: self.status.clone(),
            in_play,
            back,
            back_size,
            lay,
            lay_size,
            ltp: self.ltp,
            volume,
            spread: self.spread,
            wom: self.wom,
            implied,
            vwap: (volume > 0.0).then(|| self.trd_notional / volume),
            spn: self.spn,
            spf: self.spf,
        })
    }

    /// Share of the best three levels' size on the back side, summed best level first.
    fn weight_of_money(&mut self) -> Option<Wom> {
        if self.top_back_stale {
            self.top_back_stale = false;
            self.top_back_size = top_three(self.atb.levels.iter().rev());
        }
        if self.top_lay_stale {
            self.top_lay_stale = false;
            self.top_lay_size = top_three(self.atl.levels.iter());
        }
        let back = self.top_back_size;
        let total = back.add(self.top_lay_size);
        if !total.is_positive() {
            return None;
        }
        self.wom_objects += 1;
        Some(Wom {
            value: back.true_div(total),
            object: self.wom_objects,
        })
    }
}

/// The size at the best price: from the full ladder, else level 0 of the depth-limited one
/// (`self.batb[0][1]`, a KeyError if the stream left no level 0). The best price of a full
/// ladder is always its end level (`best` is set from it whenever the ladder changes).
fn level_size(
    best: Option<Num>,
    end_level: Option<&(Num, Num)>,
    top: Option<(Num, Num)>,
) -> PyResult<Option<Num>> {
    if best.is_none() {
        return Ok(None);
    }
    if let Some((_, size)) = end_level {
        return Ok(Some(*size));
    }
    match top {
        Some((_, size)) => Ok(Some(size)),
        None => Err(PyKeyError::new_err(0)),
    }
}

/// `1.0 / price`, raising like Python for a zero price.
fn reciprocal(price: Num) -> PyResult<f64> {
    if !price.is_nonzero() {
        return Err(PyZeroDivisionError::new_err("float division by zero"));
    }
    Ok(1.0 / price.to_f64())
}

/// `a[0] + a[1] + a[2]` over the best levels (a single level keeps its own type, none is 0.0).
fn top_three<'a>(mut levels: impl Iterator<Item = &'a (Num, Num)>) -> Wide {
    let Some((_, first)) = levels.next() else {
        return Wide::ZERO_FLOAT;
    };
    let mut total = first.wide();
    for (_, size) in levels.take(2) {
        total = total.add(size.wide());
    }
    total
}

/// Apply `[price, size]` levels to a full ladder: (invalid entries, size added, size pulled).
/// A level with a size needs a positive price (`[0, 0]` removes nothing).
fn apply_full(
    ladder: &mut Ladder,
    entries: JsonRef<'_>,
    runner: usize,
    side: Side,
    mut deltas: Option<&mut Vec<Delta>>,
) -> (u64, f64, f64) {
    let Some(entries) = entries.as_list() else {
        return (1, 0.0, 0.0);
    };
    let mut invalid = 0;
    let mut added = 0.0;
    let mut removed = 0.0;
    for entry in entries {
        let Some((price, size)) = price_size(entry) else {
            invalid += 1;
            continue;
        };
        if size.is_nonzero() && !price.is_nonzero() {
            // A level at price 0 could become the best price, which is divided by.
            invalid += 1;
            continue;
        }
        // Removing an absent level changes nothing (a zero change: skipped below).
        let old = ladder.set(price, size);
        let change = size.wide().sub(old.wide());
        if change.is_positive() {
            added += change.to_f64();
        } else if change.is_negative() {
            removed -= change.to_f64();
        } else {
            continue;
        }
        if let Some(deltas) = deltas.as_deref_mut() {
            deltas.push(Delta {
                runner,
                side,
                price,
                size_delta: change,
            });
        }
    }
    (invalid, added, removed)
}

/// Apply `[level, price, size]` entries; only level 0 is ever read, so only it is kept.
fn apply_levels(top: Option<&mut Option<(Num, Num)>>, entries: JsonRef<'_>) -> u64 {
    let Some(entries) = entries.as_list() else {
        return 1;
    };
    let mut invalid = 0;
    let mut top_level = None;
    for entry in entries {
        match level_entry(entry) {
            Some((true, price, size)) => {
                top_level = Some(size.is_nonzero().then_some((price, size)));
            }
            Some(_) => {}
            None => invalid += 1,
        }
    }
    if let (Some(top), Some(level)) = (top, top_level) {
        *top = level;
    }
    invalid
}

/// A valid `[level, price, size]` entry as (level is 0, price, size); the level passes
/// Python's `isinstance(level, int)`, so a bool is a level too. A level with a size needs a
/// positive price (level 0 gives the best price, which is divided by).
fn level_entry(entry: JsonRef<'_>) -> Option<(bool, Num, Num)> {
    let mut items = entry.as_list().filter(|items| items.len() == 3)?;
    let level_is_zero = match items.next()?.node() {
        Node::Num(Num::Int(level)) => *level == 0,
        Node::Num(Num::UInt(_)) => false,
        Node::Bool(flag) => !flag,
        _ => return None,
    };
    let price = valid_number(items.next()?)?;
    let size = valid_number(items.next()?)?;
    if size.is_nonzero() && !price.is_nonzero() {
        return None;
    }
    Some((level_is_zero, price, size))
}

/// `spb`/`spl` are never read: only their invalid entries count.
fn count_invalid_prices(entries: JsonRef<'_>) -> u64 {
    match entries.as_list() {
        Some(entries) => entries.filter(|entry| price_size(*entry).is_none()).count() as u64,
        None => 1,
    }
}
