//! Stream JSON as the Python reference sees it after `orjson.loads`, and back as
//! `orjson.dumps` writes it.
//!
//! Parsing uses serde_json with a visitor that keeps what orjson keeps: object keys in first
//! appearance order with the last value winning, ints vs floats, ints beyond 64 bits as floats,
//! a nesting limit of 1024, and `-0` as the int 0 (serde_json reports it as the float -0.0, so
//! a line with a negative zero is re-read knowing which of its zeros were written as ints).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::number::Num;
use crate::small_string::SmallString;

/// orjson refuses documents nested deeper than this.
const MAX_DEPTH: u32 = 1024;
/// orjson.dumps raises `TypeError: Recursion limit reached` beyond this nesting.
pub const DUMP_MAX_DEPTH: usize = 254;
/// Objects longer than this get a hash index while they are parsed (duplicate keys).
const INDEXED_OBJECT_LEN: usize = 16;

/// A loaded JSON value. `Pair` is a list of exactly two numbers (a ladder level), kept
/// inline; everything that reads lists sees it as the two-item list it is (`as_list`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Json {
    Null,
    Bool(bool),
    Num(Num),
    Str(SmallString),
    Array(Vec<Json>),
    Pair(Num, Num),
    Object(Vec<(SmallString, Json)>),
}

pub type Entries = [(SmallString, Json)];

impl Json {
    /// `dict.get(key)` on an object (`None` for a missing key or a non-object).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => get(entries, key),
            _ => None,
        }
    }

    /// The items of a list (a `Pair` as its two numbers).
    pub fn as_list(&self) -> Option<Cow<'_, [Json]>> {
        match self {
            Json::Array(items) => Some(Cow::Borrowed(items)),
            Json::Pair(first, second) => {
                Some(Cow::Owned(vec![Json::Num(*first), Json::Num(*second)]))
            }
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Entries> {
        match self {
            Json::Object(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(text) => Some(text),
            _ => None,
        }
    }

    /// The name of the Python type orjson makes of it (for the Python's error messages).
    pub fn python_type_name(&self) -> &'static str {
        match self {
            Json::Null => "NoneType",
            Json::Bool(_) => "bool",
            Json::Num(Num::Float(_)) => "float",
            Json::Num(_) => "int",
            Json::Str(_) => "str",
            Json::Array(_) | Json::Pair(..) => "list",
            Json::Object(_) => "dict",
        }
    }

    /// Python's `bool(value)`.
    pub fn is_truthy(&self) -> bool {
        match self {
            Json::Null => false,
            Json::Bool(value) => *value,
            Json::Num(number) => number.is_nonzero(),
            Json::Str(text) => !text.is_empty(),
            Json::Array(items) => !items.is_empty(),
            Json::Pair(..) => true,
            Json::Object(entries) => !entries.is_empty(),
        }
    }

    /// The number a Python `int`/`float` check accepts (`bool` excluded), if any.
    pub fn as_num(&self) -> Option<Num> {
        match self {
            Json::Num(number) => Some(*number),
            _ => None,
        }
    }

    /// Python's `a == b` on the loaded values (numbers compare across int, float and bool).
    pub fn py_eq(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Null, Json::Null) => true,
            (Json::Str(a), Json::Str(b)) => a == b,
            (Json::Array(_) | Json::Pair(..), Json::Array(_) | Json::Pair(..)) => {
                let (a, b) = (self.as_list().unwrap(), other.as_list().unwrap());
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.py_eq(y))
            }
            (Json::Object(a), Json::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(key, value)| other.get(key).is_some_and(|v| value.py_eq(v)))
            }
            _ => match (self.numeric(), other.numeric()) {
                (Some(a), Some(b)) => a.py_eq(b),
                _ => false,
            },
        }
    }

    /// Numbers and bools as numbers (`True == 1` in Python).
    pub fn numeric(&self) -> Option<Num> {
        match self {
            Json::Num(number) => Some(*number),
            Json::Bool(value) => Some(Num::Int(*value as i64)),
            _ => None,
        }
    }

    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Json::Null => py.None().into_bound(py),
            Json::Bool(value) => value.into_pyobject(py)?.to_owned().into_any(),
            Json::Num(number) => num_to_py(py, *number)?,
            Json::Str(text) => text.as_str().into_pyobject(py)?.into_any(),
            Json::Pair(first, second) => {
                PyList::new(py, [num_to_py(py, *first)?, num_to_py(py, *second)?])?.into_any()
            }
            Json::Array(items) => {
                let list = PyList::empty(py);
                for item in items {
                    list.append(item.to_py(py)?)?;
                }
                list.into_any()
            }
            Json::Object(entries) => {
                let dict = PyDict::new(py);
                for (key, value) in entries {
                    dict.set_item(key.as_str(), value.to_py(py)?)?;
                }
                dict.into_any()
            }
        })
    }

    /// Lists and objects nested in this value, itself included (orjson.dumps refuses more
    /// than `DUMP_MAX_DEPTH`).
    pub fn depth(&self) -> usize {
        match self {
            Json::Array(items) => 1 + items.iter().map(Json::depth).max().unwrap_or(0),
            Json::Pair(..) => 1,
            Json::Object(entries) => 1 + entries.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// `orjson.dumps(value)` as text (the caller checks `depth` where the limit matters).
    pub fn dump(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(true) => out.push_str("true"),
            Json::Bool(false) => out.push_str("false"),
            Json::Num(number) => dump_num(*number, out),
            Json::Str(text) => dump_str(text, out),
            Json::Pair(first, second) => {
                out.push('[');
                dump_num(*first, out);
                out.push(',');
                dump_num(*second, out);
                out.push(']');
            }
            Json::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.dump(out);
                }
                out.push(']');
            }
            Json::Object(entries) => {
                out.push('{');
                for (index, (key, value)) in entries.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    dump_str(key, out);
                    out.push(':');
                    value.dump(out);
                }
                out.push('}');
            }
        }
    }
}

pub fn num_to_py(py: Python<'_>, number: Num) -> PyResult<Bound<'_, PyAny>> {
    Ok(match number {
        Num::Int(value) => value.into_pyobject(py)?.into_any(),
        Num::UInt(value) => value.into_pyobject(py)?.into_any(),
        Num::Float(value) => value.into_pyobject(py)?.into_any(),
    })
}

pub fn dump_num(number: Num, out: &mut String) {
    use std::fmt::Write;
    match number {
        Num::Int(value) => write!(out, "{value}").unwrap(),
        Num::UInt(value) => write!(out, "{value}").unwrap(),
        Num::Float(value) => dump_float(value, out),
    }
}

/// orjson's float text: the shortest round-trip digits (ties to even, as Ryu and Python's
/// `repr` choose them), positional for decimal exponents -5..=15 (`100.0`, `0.00001`),
/// otherwise `1e+16` / `1.5e-7`.
pub fn dump_float(value: f64, out: &mut String) {
    use std::fmt::Write;
    if !value.is_finite() {
        out.push_str("null");
        return;
    }
    if value.is_sign_negative() {
        out.push('-');
    }
    if value == 0.0 {
        out.push_str("0.0");
        return;
    }
    let (digits, exponent) = shortest_digits(value.abs());
    if (-5..=15).contains(&exponent) {
        let point = exponent + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
            out.push_str(".0");
        } else {
            let (whole, fraction) = digits.split_at(point as usize);
            out.push_str(whole);
            out.push('.');
            out.push_str(fraction);
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        if exponent > 0 {
            write!(out, "e+{exponent}").unwrap();
        } else {
            write!(out, "e{exponent}").unwrap();
        }
    }
}

/// The significant digits of a positive finite double (no leading or trailing zeros) and the
/// decimal exponent of the first one, from Ryu's shortest representation.
fn shortest_digits(value: f64) -> (String, i32) {
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(value);
    let (mantissa, exponent) = match text.split_once('e') {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i32>().expect("ryu exponent")),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{whole}{fraction}");
    let significant = all.trim_start_matches('0');
    let leading_zeros = (all.len() - significant.len()) as i32;
    let digits = significant.trim_end_matches('0').to_owned();
    (digits, exponent + whole.len() as i32 - 1 - leading_zeros)
}

fn dump_str(text: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What `orjson.loads` would give for `raw`, or `None` where it raises.
pub fn parse(raw: &[u8]) -> Option<Json> {
    let (items, entries) = STACKS.with_borrow_mut(std::mem::take);
    let mut context = ParseContext {
        items: RefCell::new(items),
        entries: RefCell::new(entries),
        ..Default::default()
    };
    let mut value = parse_with(raw, &context);
    if value.is_some() && context.negative_zero_seen.get() {
        context.negative_zero_is_int = RefCell::new(negative_zero_tokens(raw));
        value = parse_with(raw, &context);
    }
    STACKS.set((context.items.into_inner(), context.entries.into_inner()));
    value
}

fn parse_with(raw: &[u8], context: &ParseContext) -> Option<Json> {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    deserializer.disable_recursion_limit();
    let value = JsonSeed { depth: 0, context }.deserialize(&mut deserializer);
    // A failed read leaves partial lists and objects on the stacks.
    context.items.borrow_mut().clear();
    context.entries.borrow_mut().clear();
    let value = value.ok()?;
    deserializer.end().ok()?;
    Some(value)
}

#[derive(Default)]
struct ParseContext {
    negative_zero_seen: Cell<bool>,
    /// For a re-read: per negative zero in document order, whether it was written as an int.
    negative_zero_is_int: RefCell<std::collections::VecDeque<bool>>,
    /// Items of the lists being read, innermost last: each list is allocated once, at its
    /// exact length, when it ends.
    items: RefCell<Vec<Json>>,
    /// Entries of the objects being read, the same way.
    entries: RefCell<Vec<(SmallString, Json)>>,
}

/// The list items and object entries of a parse in progress (see `ParseContext`).
type Stacks = (Vec<Json>, Vec<(SmallString, Json)>);

thread_local! {
    /// The parse stacks, kept between lines so they are allocated once per thread.
    static STACKS: RefCell<Stacks> = RefCell::default();
}

/// The number tokens of `raw` that read as a negative zero, in order: `true` for `-0` (an
/// int to orjson), `false` for float spellings (`-0.0`, `-0e3`, `-1e-400`).
fn negative_zero_tokens(raw: &[u8]) -> std::collections::VecDeque<bool> {
    let mut tokens = std::collections::VecDeque::new();
    let mut index = 0;
    let mut in_string = false;
    while index < raw.len() {
        let byte = raw[index];
        if in_string {
            match byte {
                b'\\' => index += 1,
                b'"' => in_string = false,
                _ => {}
            }
            index += 1;
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'-' => {
                let end = raw[index + 1..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                    .map_or(raw.len(), |offset| index + 1 + offset);
                let token = &raw[index..end];
                let is_zero = std::str::from_utf8(token)
                    .ok()
                    .and_then(|text| text.parse::<f64>().ok())
                    .is_some_and(|value| value == 0.0);
                if is_zero {
                    tokens.push_back(!token.iter().any(|b| matches!(b, b'.' | b'e' | b'E')));
                }
                index = end;
                continue;
            }
            _ => {}
        }
        index += 1;
    }
    tokens
}

struct JsonSeed<'c> {
    depth: u32,
    context: &'c ParseContext,
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl JsonSeed<'_> {
    fn nested<E: serde::de::Error>(&self) -> Result<JsonSeed<'_>, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom("depth limit exceeded"));
        }
        Ok(JsonSeed {
            depth: self.depth + 1,
            context: self.context,
        })
    }
}

impl<'de> Visitor<'de> for JsonSeed<'_> {
    type Value = Json;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json, E> {
        Ok(Json::Num(Num::Int(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json, E> {
        Ok(Json::Num(match i64::try_from(value) {
            Ok(small) => Num::Int(small),
            Err(_) => Num::UInt(value),
        }))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json, E> {
        if value == 0.0 && value.is_sign_negative() {
            self.context.negative_zero_seen.set(true);
            if self.context.negative_zero_is_int.borrow_mut().pop_front() == Some(true) {
                return Ok(Json::Num(Num::Int(0)));
            }
        }
        Ok(Json::Num(Num::Float(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json::Str(SmallString::from(value)))
    }

    fn visit_string<E>(self, value: String) -> Result<Json, E> {
        Ok(Json::Str(SmallString::from(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let start = self.context.items.borrow().len();
        while let Some(item) = seq.next_element_seed(self.nested()?)? {
            self.context.items.borrow_mut().push(item);
        }
        let mut stack = self.context.items.borrow_mut();
        // Two numbers and nothing else: a ladder level, kept inline.
        if let [Json::Num(first), Json::Num(second)] = stack[start..] {
            stack.truncate(start);
            return Ok(Json::Pair(first, second));
        }
        Ok(Json::Array(stack.drain(start..).collect()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let start = self.context.entries.borrow().len();
        // Keys are found by a scan; a long object gets a hash index (duplicate keys).
        let mut index: Option<HashMap<SmallString, usize>> = None;
        while let Some(KeySeed(key)) = map.next_key::<KeySeed>()? {
            let value = map.next_value_seed(self.nested()?)?;
            let mut stack = self.context.entries.borrow_mut();
            let entries = &mut stack[start..];
            let existing = match &mut index {
                None if entries.len() < INDEXED_OBJECT_LEN => {
                    entries.iter().position(|(k, _)| *k == key)
                }
                None => {
                    let built = entries.iter().enumerate().map(|(i, (k, _))| (k.clone(), i));
                    index.insert(built.collect()).get(&key).copied()
                }
                Some(index) => index.get(&key).copied(),
            };
            match existing {
                Some(position) => entries[position].1 = value,
                None => {
                    if let Some(index) = &mut index {
                        index.insert(key.clone(), entries.len());
                    }
                    stack.push((key, value));
                }
            }
        }
        Ok(Json::Object(
            self.context.entries.borrow_mut().drain(start..).collect(),
        ))
    }
}

/// `dict.get(key)` on an object's entries.
pub fn get<'a>(entries: &'a Entries, key: &str) -> Option<&'a Json> {
    entries.iter().find(|(k, _)| **k == *key).map(|(_, v)| v)
}

/// An object key, read without allocating when it is short.
struct KeySeed(SmallString);

impl<'de> Deserialize<'de> for KeySeed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeySeed, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = KeySeed;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, value: &str) -> Result<KeySeed, E> {
        Ok(KeySeed(SmallString::from(value)))
    }
}
