//! Stream JSON as the Python reference sees it after `orjson.loads`, and back as
//! `orjson.dumps` writes it.
//!
//! A parsed document is a tape: its nodes in document order in one vector, a list or object
//! node followed by its contents and knowing their size, plus one buffer with the text of its
//! strings. A line then costs two allocations however many lists, objects and strings it
//! has, and copying or dropping a value is a `memcpy` or a `free` (a tree of small vectors
//! made parsing twice as slow). `JsonRef` reads a value on a tape; `Json` owns a value (a
//! scalar without allocating).
//!
//! Parsing uses serde_json with a visitor that keeps what orjson keeps: object keys in first
//! appearance order with the last value winning, ints vs floats, ints beyond 64 bits as
//! floats, a nesting limit of 1024, and `-0` as the int 0 (serde_json reports it as the float
//! -0.0, so a line with a negative zero is re-read knowing which of its zeros were ints).

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
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

/// One node of a tape. `size` counts the nodes of the value, itself included; an object's
/// contents are `Key` nodes each followed by its value; strings are spans of the document's
/// text.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Node {
    Null,
    Bool(bool),
    Num(Num),
    Str(Span),
    Array { len: u32, size: u32 },
    Object { len: u32, size: u32 },
    Key(Span),
}

const _: () = assert!(
    std::mem::size_of::<Node>() == 16,
    "tape nodes stay 16 bytes"
);

/// Where a string is in its document's text.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn of(self, text: &str) -> &str {
        &text[self.start as usize..(self.start + self.len) as usize]
    }
}

impl Node {
    fn size(&self) -> usize {
        match self {
            Node::Array { size, .. } | Node::Object { size, .. } => *size as usize,
            _ => 1,
        }
    }
}

/// A value on a tape: the slice holding exactly its nodes, and the document's text.
#[derive(Clone, Copy, Debug)]
pub struct JsonRef<'a> {
    nodes: &'a [Node],
    text: &'a str,
}

/// The items of a list, in order.
#[derive(Clone)]
pub struct Items<'a> {
    rest: &'a [Node],
    text: &'a str,
    remaining: u32,
}

impl<'a> Iterator for Items<'a> {
    type Item = JsonRef<'a>;

    fn next(&mut self) -> Option<JsonRef<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let (item, rest) = self.rest.split_at(self.rest[0].size());
        self.rest = rest;
        Some(JsonRef {
            nodes: item,
            text: self.text,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for Items<'_> {}

/// The entries of an object, in order (keys are unique).
#[derive(Clone)]
pub struct Entries<'a> {
    rest: &'a [Node],
    text: &'a str,
    remaining: u32,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, JsonRef<'a>);

    fn next(&mut self) -> Option<(&'a str, JsonRef<'a>)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let Node::Key(key) = self.rest[0] else {
            unreachable!("object entries start with a key")
        };
        let (value, rest) = self.rest[1..].split_at(self.rest[1].size());
        self.rest = rest;
        Some((
            key.of(self.text),
            JsonRef {
                nodes: value,
                text: self.text,
            },
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for Entries<'_> {}

impl<'a> JsonRef<'a> {
    pub fn node(self) -> &'a Node {
        &self.nodes[0]
    }

    /// The items of a list.
    pub fn as_list(self) -> Option<Items<'a>> {
        match self.nodes[0] {
            Node::Array { len, .. } => Some(Items {
                rest: &self.nodes[1..],
                text: self.text,
                remaining: len,
            }),
            _ => None,
        }
    }

    /// The entries of an object.
    pub fn as_object(self) -> Option<Entries<'a>> {
        match self.nodes[0] {
            Node::Object { len, .. } => Some(Entries {
                rest: &self.nodes[1..],
                text: self.text,
                remaining: len,
            }),
            _ => None,
        }
    }

    /// `dict.get(key)` on an object (`None` for a missing key or a non-object).
    pub fn get(self, key: &str) -> Option<JsonRef<'a>> {
        self.as_object()?
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value)
    }

    /// Several `dict.get`s in one pass over an object's entries.
    pub fn get_many<const N: usize>(self, keys: [&str; N]) -> [Option<JsonRef<'a>>; N] {
        let mut found = [None; N];
        for (key, value) in self.as_object().into_iter().flatten() {
            if let Some(slot) = keys.iter().position(|wanted| *wanted == key) {
                found[slot] = Some(value);
            }
        }
        found
    }

    pub fn as_str(self) -> Option<&'a str> {
        match self.nodes[0] {
            Node::Str(span) => Some(span.of(self.text)),
            _ => None,
        }
    }

    /// The number a Python `int`/`float` check accepts (`bool` excluded), if any.
    pub fn as_num(self) -> Option<Num> {
        match self.nodes[0] {
            Node::Num(number) => Some(number),
            _ => None,
        }
    }

    /// Numbers and bools as numbers (`True == 1` in Python).
    pub fn numeric(self) -> Option<Num> {
        match self.nodes[0] {
            Node::Num(number) => Some(number),
            Node::Bool(value) => Some(Num::Int(value as i64)),
            _ => None,
        }
    }

    /// Python's `bool(value)`.
    pub fn is_truthy(self) -> bool {
        match self.nodes[0] {
            Node::Null => false,
            Node::Bool(value) => value,
            Node::Num(number) => number.is_nonzero(),
            Node::Str(span) | Node::Key(span) => span.len > 0,
            Node::Array { len, .. } | Node::Object { len, .. } => len > 0,
        }
    }

    /// Python's `a == b` on the loaded values (numbers compare across int, float and bool).
    pub fn py_eq(self, other: JsonRef<'_>) -> bool {
        match (&self.nodes[0], &other.nodes[0]) {
            (Node::Null, Node::Null) => true,
            (Node::Str(a), Node::Str(b)) => a.of(self.text) == b.of(other.text),
            (Node::Array { len: a, .. }, Node::Array { len: b, .. }) => {
                a == b
                    && self
                        .as_list()
                        .unwrap()
                        .zip(other.as_list().unwrap())
                        .all(|(x, y)| x.py_eq(y))
            }
            (Node::Object { len: a, .. }, Node::Object { len: b, .. }) => {
                a == b
                    && self
                        .as_object()
                        .unwrap()
                        .all(|(key, value)| other.get(key).is_some_and(|v| value.py_eq(v)))
            }
            _ => match (self.numeric(), other.numeric()) {
                (Some(a), Some(b)) => a.py_eq(b),
                _ => false,
            },
        }
    }

    pub fn to_py<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.nodes[0] {
            Node::Null => py.None().into_bound(py),
            Node::Bool(value) => value.into_pyobject(py)?.to_owned().into_any(),
            Node::Num(number) => num_to_py(py, number)?,
            Node::Str(span) | Node::Key(span) => span.of(self.text).into_pyobject(py)?.into_any(),
            Node::Array { .. } => {
                let list = PyList::empty(py);
                for item in self.as_list().unwrap() {
                    list.append(item.to_py(py)?)?;
                }
                list.into_any()
            }
            Node::Object { .. } => {
                let dict = PyDict::new(py);
                for (key, value) in self.as_object().unwrap() {
                    dict.set_item(key, value.to_py(py)?)?;
                }
                dict.into_any()
            }
        })
    }

    /// Lists and objects nested in this value, itself included (orjson.dumps refuses more
    /// than `DUMP_MAX_DEPTH`).
    pub fn depth(self) -> usize {
        match self.nodes[0] {
            Node::Array { .. } => {
                1 + self
                    .as_list()
                    .unwrap()
                    .map(JsonRef::depth)
                    .max()
                    .unwrap_or(0)
            }
            Node::Object { .. } => {
                1 + self
                    .as_object()
                    .unwrap()
                    .map(|(_, v)| v.depth())
                    .max()
                    .unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// `orjson.dumps(value)` as text (the caller checks `depth` where the limit matters).
    pub fn dump(self, out: &mut String) {
        match self.nodes[0] {
            Node::Null => out.push_str("null"),
            Node::Bool(true) => out.push_str("true"),
            Node::Bool(false) => out.push_str("false"),
            Node::Num(number) => dump_num(number, out),
            Node::Str(span) | Node::Key(span) => dump_str(span.of(self.text), out),
            Node::Array { .. } => {
                out.push('[');
                for (index, item) in self.as_list().unwrap().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.dump(out);
                }
                out.push(']');
            }
            Node::Object { .. } => {
                out.push('{');
                for (index, (key, value)) in self.as_object().unwrap().enumerate() {
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

    pub fn to_owned(self) -> Json {
        match self.nodes {
            [Node::Str(span)] => Json::str(span.of(self.text)),
            [Node::Array { .. } | Node::Object { .. }, ..] => Json::Tree {
                nodes: self.nodes.into(),
                text: self.text.into(),
            },
            [scalar] => Json::Scalar(*scalar),
            _ => unreachable!("a value is one node or a container"),
        }
    }
}

/// An owned value: a number, bool or null as its node, a string inline when short, a list or
/// object as its own tape (nodes and the text of the document it came from).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Json {
    Scalar(Node),
    Str { node: Node, text: SmallString },
    Tree { nodes: Box<[Node]>, text: Box<str> },
}

impl Json {
    pub const NULL: Json = Json::Scalar(Node::Null);

    pub fn str(text: &str) -> Json {
        let span = Span {
            start: 0,
            len: text.len() as u32,
        };
        Json::Str {
            node: Node::Str(span),
            text: SmallString::from(text),
        }
    }

    pub fn num(number: Num) -> Json {
        Json::Scalar(Node::Num(number))
    }

    pub fn as_ref(&self) -> JsonRef<'_> {
        match self {
            Json::Scalar(node) => JsonRef {
                nodes: std::slice::from_ref(node),
                text: "",
            },
            Json::Str { node, text } => JsonRef {
                nodes: std::slice::from_ref(node),
                text,
            },
            Json::Tree { nodes, text } => JsonRef { nodes, text },
        }
    }

    pub fn node(&self) -> &Node {
        self.as_ref().node()
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_ref().as_str()
    }

    pub fn py_eq(&self, other: &Json) -> bool {
        self.as_ref().py_eq(other.as_ref())
    }

    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.as_ref().to_py(py)
    }

    pub fn dump(&self, out: &mut String) {
        self.as_ref().dump(out)
    }
}

pub fn num_to_py(py: Python<'_>, number: Num) -> PyResult<Bound<'_, PyAny>> {
    Ok(match number {
        Num::Int(value) => value.into_pyobject(py)?.into_any(),
        Num::UInt(value) => value.into_pyobject(py)?.into_any(),
        Num::Float(value) => value.into_pyobject(py)?.into_any(),
    })
}

/// `None` as Python's None, a number as `num_to_py` makes it.
pub fn option_num(py: Python<'_>, value: Option<Num>) -> PyResult<Bound<'_, PyAny>> {
    match value {
        Some(number) => num_to_py(py, number),
        None => Ok(py.None().into_bound(py)),
    }
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

/// Parse `raw` (what `orjson.loads` would give) onto this thread's scratch tape and hand the
/// value (`None` where orjson raises) to `read`; the tape is reused by the next parse.
pub fn with_parsed<T>(raw: &[u8], read: impl FnOnce(Option<JsonRef<'_>>) -> T) -> T {
    SCRATCH.with_borrow_mut(|scratch| {
        let context = ParseContext {
            tape: RefCell::new(std::mem::take(&mut scratch.tape)),
            text: RefCell::new(std::mem::take(&mut scratch.text)),
            keys: RefCell::new(std::mem::take(&mut scratch.keys)),
            ..ParseContext::default()
        };
        let mut parsed = parse_with(raw, &context);
        if parsed && context.negative_zero_seen.get() {
            *context.negative_zero_is_int.borrow_mut() = negative_zero_tokens(raw);
            parsed = parse_with(raw, &context);
        }
        scratch.tape = context.tape.into_inner();
        scratch.text = context.text.into_inner();
        scratch.keys = context.keys.into_inner();
        read(parsed.then(|| JsonRef {
            nodes: &scratch.tape,
            text: &scratch.text,
        }))
    })
}

/// Parse onto the context's tape (emptied first); false where orjson would raise.
fn parse_with(raw: &[u8], context: &ParseContext) -> bool {
    context.tape.borrow_mut().clear();
    context.text.borrow_mut().clear();
    context.keys.borrow_mut().clear();
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    deserializer.disable_recursion_limit();
    JsonSeed { depth: 0, context }
        .deserialize(&mut deserializer)
        .is_ok()
        && deserializer.end().is_ok()
}

#[derive(Default)]
struct Scratch {
    tape: Vec<Node>,
    text: String,
    keys: Vec<u32>,
}

thread_local! {
    /// The parse buffers, kept between lines so they are allocated once per thread.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

#[derive(Default)]
struct ParseContext {
    tape: RefCell<Vec<Node>>,
    /// The text of the document's strings and keys, which `Span`s point into.
    text: RefCell<String>,
    /// Tape positions of the keys of the objects being read, innermost last.
    keys: RefCell<Vec<u32>>,
    negative_zero_seen: Cell<bool>,
    /// For a re-read: per negative zero in document order, whether it was written as an int.
    negative_zero_is_int: RefCell<VecDeque<bool>>,
}

/// The number tokens of `raw` that read as a negative zero, in order: `true` for `-0` (an
/// int to orjson), `false` for float spellings (`-0.0`, `-0e3`, `-1e-400`).
fn negative_zero_tokens(raw: &[u8]) -> VecDeque<bool> {
    let mut tokens = VecDeque::new();
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

/// Reads one value onto the tape.
struct JsonSeed<'c> {
    depth: u32,
    context: &'c ParseContext,
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ParseContext {
    fn add_text(&self, value: &str) -> Span {
        let mut text = self.text.borrow_mut();
        let start = text.len() as u32;
        text.push_str(value);
        Span {
            start,
            len: value.len() as u32,
        }
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

    fn push<E>(&self, node: Node) -> Result<(), E> {
        self.context.tape.borrow_mut().push(node);
        Ok(())
    }

    /// Where a container's node goes (filled in when the container ends).
    fn open(&self) -> usize {
        let mut tape = self.context.tape.borrow_mut();
        tape.push(Node::Null);
        tape.len() - 1
    }

    fn size_from(&self, at: usize) -> u32 {
        (self.context.tape.borrow().len() - at) as u32
    }
}

impl<'de> Visitor<'de> for JsonSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.push(Node::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<(), E> {
        self.push(Node::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<(), E> {
        self.push(Node::Num(Num::Int(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<(), E> {
        self.push(Node::Num(match i64::try_from(value) {
            Ok(small) => Num::Int(small),
            Err(_) => Num::UInt(value),
        }))
    }

    fn visit_f64<E>(self, value: f64) -> Result<(), E> {
        if value == 0.0 && value.is_sign_negative() {
            self.context.negative_zero_seen.set(true);
            if self.context.negative_zero_is_int.borrow_mut().pop_front() == Some(true) {
                return self.push(Node::Num(Num::Int(0)));
            }
        }
        self.push(Node::Num(Num::Float(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<(), E> {
        self.push(Node::Str(self.context.add_text(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let at = self.open();
        let mut len = 0;
        while seq.next_element_seed(self.nested()?)?.is_some() {
            len += 1;
        }
        let size = self.size_from(at);
        self.context.tape.borrow_mut()[at] = Node::Array { len, size };
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let at = self.open();
        let keys_start = self.context.keys.borrow().len();
        let mut duplicates = false;
        let mut len = 0;
        let mut index: Option<HashSet<String>> = None;
        while let Some(key) = map.next_key_seed(KeySeed {
            context: self.context,
        })? {
            {
                let tape = self.context.tape.borrow();
                let text = self.context.text.borrow();
                let keys = &self.context.keys.borrow()[keys_start..];
                let key_text = |position: &u32| match tape[*position as usize] {
                    Node::Key(span) => span.of(&text),
                    _ => unreachable!("key positions point at keys"),
                };
                let new_key = key.of(&text);
                duplicates |= match &mut index {
                    None if keys.len() < INDEXED_OBJECT_LEN => {
                        keys.iter().any(|p| key_text(p) == new_key)
                    }
                    None => {
                        let built = keys.iter().map(|p| key_text(p).to_owned()).collect();
                        index.insert(built).contains(new_key)
                    }
                    Some(index) => index.contains(new_key),
                };
                if let Some(index) = &mut index {
                    index.insert(new_key.to_owned());
                }
            }
            let key_position = self.context.tape.borrow().len() as u32;
            self.context.keys.borrow_mut().push(key_position);
            self.push::<A::Error>(Node::Key(key))?;
            map.next_value_seed(self.nested()?)?;
            len += 1;
        }
        self.context.keys.borrow_mut().truncate(keys_start);
        if duplicates {
            len = self.collapse_duplicates(at);
        }
        let size = self.size_from(at);
        self.context.tape.borrow_mut()[at] = Node::Object { len, size };
        Ok(())
    }
}

impl JsonSeed<'_> {
    /// Rewrite the object that starts at `at` (the last thing on the tape) the way a Python
    /// dict keeps repeated keys: first position, last value. Returns its number of entries.
    fn collapse_duplicates(&self, at: usize) -> u32 {
        let mut tape = self.context.tape.borrow_mut();
        let text = self.context.text.borrow();
        let contents = tape.split_off(at + 1);
        let mut entries: Vec<(Node, &[Node])> = Vec::new();
        let mut rest = contents.as_slice();
        while !rest.is_empty() {
            let Node::Key(key) = rest[0] else {
                unreachable!("object entries start with a key")
            };
            let (value, after) = rest[1..].split_at(rest[1].size());
            let same_key =
                |node: &Node| matches!(node, Node::Key(k) if k.of(&text) == key.of(&text));
            match entries.iter_mut().find(|(k, _)| same_key(k)) {
                Some(entry) => entry.1 = value,
                None => entries.push((rest[0], value)),
            }
            rest = after;
        }
        let len = entries.len() as u32;
        for (key, value) in entries {
            tape.push(key);
            tape.extend_from_slice(value);
        }
        len
    }
}

/// Reads an object key into the document's text.
struct KeySeed<'c> {
    context: &'c ParseContext,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Span;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Span, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Span;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E>(self, value: &str) -> Result<Span, E> {
        Ok(self.context.add_text(value))
    }
}
