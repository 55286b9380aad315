//! One market's state: `operators/market_book.py` in Rust.
//!
//! Every rule of the Python is kept, including the odd ones a corrupted stream can reach
//! (selection ids that are floats, strings or bools; handicaps given as strings; NaN
//! handicaps that never match a runner), because the output must be identical. Invalid parts
//! of a change are counted (invalid entries, an invalid definition), as the Python counts
//! them, never raised.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};
use serde::{Deserialize, Serialize};

use crate::json::{Json, JsonRef, Node};
use crate::number::{Num, Wide};
use crate::runner_book::{Delta, RunnerBook};

/// A Python int that may not fit 128 bits (`int(1e300)` from a market definition).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PyIntValue {
    Small(i128),
    Decimal(String),
}

impl PyIntValue {
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            PyIntValue::Small(value) => Ok(value.into_pyobject(py)?.into_any()),
            PyIntValue::Decimal(text) => py.get_type::<PyInt>().call1((text,)),
        }
    }

    fn from_py(value: &Bound<'_, PyAny>) -> PyResult<PyIntValue> {
        Ok(match value.extract::<i128>() {
            Ok(small) => PyIntValue::Small(small),
            Err(_) => PyIntValue::Decimal(value.str()?.to_string()),
        })
    }
}

/// Python's `int(value or 0)` (odd values go to Python's `int` itself); an error where `int`
/// refuses the value (`_definition_int` gives None there).
fn python_int(value: JsonRef<'_>) -> PyResult<PyIntValue> {
    if !value.is_truthy() {
        return Ok(PyIntValue::Small(0));
    }
    match value.node() {
        Node::Bool(_) => Ok(PyIntValue::Small(1)),
        Node::Num(number) => match number.wide() {
            Wide::Int(int) => Ok(PyIntValue::Small(int)),
            Wide::Float(float) if float.abs() < 1e38 => {
                Ok(PyIntValue::Small(float.trunc() as i128))
            }
            Wide::Float(_) => int_by_python(value),
        },
        _ => int_by_python(value),
    }
}

fn int_by_python(value: JsonRef<'_>) -> PyResult<PyIntValue> {
    Python::attach(|py| PyIntValue::from_py(&py.get_type::<PyInt>().call1((value.to_py(py)?,))?))
}

/// Python's `float(value)`, `None` where it raises (the callers skip such entries); strings
/// go to Python's `float` itself.
fn python_float(value: JsonRef<'_>) -> Option<f64> {
    match value.node() {
        Node::Num(number) => Some(number.to_f64()),
        Node::Bool(flag) => Some(*flag as u8 as f64),
        Node::Str(_) => Python::attach(|py| {
            let parsed = py.get_type::<PyFloat>().call1((value.as_str()?,)).ok()?;
            parsed.extract().ok()
        }),
        _ => None,
    }
}

/// How a value hashes and compares as a dict key in Python (`1 == 1.0 == True`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
enum IdKey {
    Null,
    Int(i128),
    Float(u64),
    Str(String),
}

impl IdKey {
    /// `None` for unhashable values (lists and dicts).
    fn of(value: JsonRef<'_>) -> Option<IdKey> {
        Some(match value.node() {
            Node::Null => IdKey::Null,
            Node::Bool(flag) => IdKey::Int(*flag as i128),
            Node::Num(number) => match number.wide() {
                Wide::Int(int) => IdKey::Int(int),
                Wide::Float(float) if float.fract() == 0.0 && float.abs() < 1e38 => {
                    IdKey::Int(float as i128)
                }
                Wide::Float(float) => IdKey::Float(float.to_bits()),
            },
            Node::Str(_) => IdKey::Str(value.as_str()?.to_owned()),
            Node::Key(_) => unreachable!("keys are not values"),
            Node::Array { .. } | Node::Object { .. } => return None,
        })
    }
}

/// A runner's dict key `(selection id, handicap)`; NaN handicaps have none (never equal).
type RunnerKey = (IdKey, u64);

fn runner_key(id: IdKey, handicap: f64) -> Option<RunnerKey> {
    if handicap.is_nan() {
        return None;
    }
    Some((
        id,
        if handicap == 0.0 {
            0
        } else {
            handicap.to_bits()
        },
    ))
}
/// What one `mc` element did: runners touched (first-touch order), invalid entries, whether
/// it carried a market definition and whether that was valid.
pub struct Applied {
    pub touched: Vec<usize>,
    pub invalid: u64,
    pub definition_changed: bool,
    pub definition_valid: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MarketBook {
    pub status: Json,
    pub in_play: bool,
    pub bet_delay: PyIntValue,
    pub version: PyIntValue,
    pub market_time_ms: Option<i64>,
    /// `tv` as given: `isinstance(tv, (float, int))` lets a bool through.
    pub total_matched: Json,
    pub runners: Vec<RunnerBook>,
    index: HashMap<RunnerKey, usize>,
    /// Runners keyed `(int id, 0.0)`, by id alone: most `rc` elements carry no `hc`.
    plain: HashMap<i128, usize>,
    messages: i64,
}

impl MarketBook {
    pub fn new() -> MarketBook {
        MarketBook {
            status: Json::str("OPEN"),
            in_play: false,
            bet_delay: PyIntValue::Small(0),
            version: PyIntValue::Small(0),
            market_time_ms: None,
            total_matched: Json::num(Num::Float(0.0)),
            runners: Vec::new(),
            index: HashMap::new(),
            plain: HashMap::new(),
            messages: 0,
        }
    }

    /// Apply one `mc` element; each touched runner's `moved_*` say what it did there.
    pub fn apply(
        &mut self,
        change: JsonRef<'_>,
        mut deltas: Option<&mut Vec<Delta>>,
    ) -> PyResult<Applied> {
        self.messages += 1;
        let message = self.messages;
        let [image, definition, runner_changes, total] =
            change.get_many(["img", "marketDefinition", "rc", "tv"]);
        if image.is_some_and(JsonRef::is_truthy) {
            for runner in &mut self.runners {
                runner.clear_prices();
            }
            self.total_matched = Json::num(Num::Float(0.0));
        }
        let definition = definition.filter(|d| d.as_object().is_some());
        let definition_valid = match definition {
            Some(definition) => self.apply_definition(definition)?,
            None => true,
        };
        let mut touched = Vec::new();
        let mut invalid = 0;
        if let Some(runner_changes) = runner_changes {
            match runner_changes.node() {
                Node::Array { .. } => {
                    for rc in runner_changes.as_list().unwrap() {
                        let Some((index, key)) = self.runner_for_change(rc) else {
                            invalid += 1;
                            continue;
                        };
                        let runner = &mut self.runners[index];
                        if runner.touched_in != message {
                            runner.touched_in = message;
                            runner.tick_key = key;
                            runner.moved_traded = 0.0;
                            runner.moved_back_added = 0.0;
                            runner.moved_back_removed = 0.0;
                            runner.moved_lay_added = 0.0;
                            runner.moved_lay_removed = 0.0;
                            touched.push(index);
                        }
                        invalid += runner.apply(index, rc, deltas.as_deref_mut());
                    }
                }
                Node::Null => {}
                // A number, string or object: no runner change can be read from it.
                _ => invalid += 1,
            }
        }
        if let Some(total) = total {
            if total.numeric().is_some_and(Num::is_non_negative) {
                self.total_matched = total.to_owned();
            }
        }
        Ok(Applied {
            touched,
            invalid,
            definition_changed: definition.is_some(),
            definition_valid,
        })
    }

    /// The runner an `rc` element addresses and the key as the element spells it; `None`
    /// where the Python raises KeyError/TypeError/ValueError (an invalid entry).
    fn runner_for_change(&mut self, rc: JsonRef<'_>) -> Option<(usize, (Json, f64))> {
        let [selection_id, handicap] = rc.get_many(["id", "hc"]);
        let selection_id = selection_id?;
        let plain_id = selection_id.as_num().and_then(Num::as_int);
        if let (Some(id), None) = (plain_id, handicap) {
            if let Some(&index) = self.plain.get(&id) {
                let runner = &self.runners[index];
                return Some((index, (runner.selection_id.clone(), runner.handicap)));
            }
        }
        let (index, handicap) = self.runner_by_key(selection_id, handicap)?;
        Some((index, (selection_id.to_owned(), handicap)))
    }

    /// The runner of an `id` and optional `hc` (added if new) and the handicap as a float;
    /// `None` where the Python raises KeyError/TypeError/ValueError.
    fn runner_by_key(
        &mut self,
        selection_id: JsonRef<'_>,
        handicap: Option<JsonRef<'_>>,
    ) -> Option<(usize, f64)> {
        let handicap = match handicap {
            None => 0.0,
            Some(value) => python_float(value)?,
        };
        let key = runner_key(IdKey::of(selection_id)?, handicap);
        if let Some(index) = key.as_ref().and_then(|key| self.index.get(key)) {
            return Some((*index, handicap));
        }
        let index = self.runners.len();
        self.runners
            .push(RunnerBook::new(selection_id.to_owned(), handicap));
        if let Some(key) = key {
            self.index.insert(key, index);
        }
        if let Some(id) = selection_id.as_num().and_then(Num::as_int) {
            if handicap == 0.0 && handicap.is_sign_positive() {
                self.plain.insert(id, index);
            }
        }
        Some((index, handicap))
    }

    /// Take a market definition; `false` when part of it is invalid (skipped, the rest
    /// applied), as `MarketBook._apply_definition` decides. Errors only where Python itself
    /// fails (not on any input).
    fn apply_definition(&mut self, definition: JsonRef<'_>) -> PyResult<bool> {
        let mut valid = true;
        let field = |key: &str| definition.get(key);
        if let Some(status) = field("status") {
            self.status = status.to_owned();
        }
        self.in_play = field("inPlay").is_some_and(JsonRef::is_truthy);
        match python_int(field("betDelay").unwrap_or(Json::NULL.as_ref())) {
            Ok(bet_delay) => self.bet_delay = bet_delay,
            Err(_) => valid = false,
        }
        if let Some(version) = field("version") {
            match python_int(version) {
                Ok(version) => self.version = version,
                Err(_) => valid = false,
            }
        }
        let market_time = field("marketTime").filter(|time| time.is_truthy());
        self.market_time_ms = match market_time {
            Some(time) => Python::attach(|py| crate::records::betfair_time_ms(py, time))?,
            None => None,
        };
        if market_time.is_some() && self.market_time_ms.is_none() {
            valid = false;
        }
        let runner_definitions = match field("runners") {
            None => None,
            Some(runners) => {
                if runners.as_list().is_none() {
                    valid = false;
                }
                runners.as_list()
            }
        };
        for runner_definition in runner_definitions.into_iter().flatten() {
            let Some(index) = self.runner_for_definition(runner_definition) else {
                valid = false;
                continue;
            };
            let runner = &mut self.runners[index];
            let field = |key: &str| runner_definition.get(key);
            let owned = |key: &str| field(key).map_or(Json::NULL, JsonRef::to_owned);
            if let Some(status) = field("status") {
                runner.status = status.to_owned();
            }
            if let Some(bsp) = field("bsp") {
                runner.bsp = bsp.to_owned();
            }
            runner.adjustment_factor = owned("adjustmentFactor");
            runner.removal_date = owned("removalDate");
            if let Some(removal_date) = field("removalDate").filter(|date| date.is_truthy()) {
                let known = match removal_date.node() {
                    Node::Str(_) => {
                        Python::attach(|py| crate::records::betfair_time_ms(py, removal_date))?
                            .is_some()
                    }
                    _ => false,
                };
                valid &= known;
            }
            runner.sort_priority = owned("sortPriority");
            if let Some(name) = field("name") {
                runner.name = name.to_owned();
            }
        }
        Ok(valid)
    }

    /// The runner a definition's runner entry addresses (added if new); `None` where the
    /// Python raises KeyError/TypeError/ValueError (no usable `id`/`hc`: an invalid part).
    fn runner_for_definition(&mut self, runner_definition: JsonRef<'_>) -> Option<usize> {
        runner_definition.as_object()?;
        let [selection_id, handicap] = runner_definition.get_many(["id", "hc"]);
        Some(self.runner_by_key(selection_id?, handicap)?.0)
    }

    /// (back book %, lay book %, active runners) over active runners, in runner order.
    pub fn overrounds(&self) -> (Option<f64>, Option<f64>, i64) {
        let mut back = 0.0;
        let mut lay = 0.0;
        let mut have_back = false;
        let mut have_lay = false;
        let mut active = 0;
        for runner in &self.runners {
            if runner.status.as_str() != Some("ACTIVE") {
                continue;
            }
            active += 1;
            if let Some(best) = runner.best_back.filter(|b| b.is_nonzero()) {
                back += 1.0 / best.to_f64();
                have_back = true;
            }
            if let Some(best) = runner.best_lay.filter(|l| l.is_nonzero()) {
                lay += 1.0 / best.to_f64();
                have_lay = true;
            }
        }
        (
            have_back.then_some(back * 100.0),
            have_lay.then_some(lay * 100.0),
            active,
        )
    }

    pub fn seconds_to_off(&self, publish_time_ms: i128) -> Option<f64> {
        self.market_time_ms
            .map(|off| ((off as i128 - publish_time_ms) as f64) / 1000.0)
    }
}
