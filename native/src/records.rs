//! The Python side of the output: the record classes of `operators/` and the UTC datetimes
//! they carry, built exactly as the Python operators build them.

use pyo3::exceptions::{PyOSError, PyOverflowError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

use crate::json::{Json, JsonRef};
use crate::number::int_true_divide;

/// The Python classes and functions the native core emits or calls, imported once.
pub struct Classes {
    pub runner_tick: Py<PyType>,
    pub market_tick: Py<PyType>,
    pub window_aggregate: Py<PyType>,
    pub market_row: Py<PyType>,
    pub runner_row: Py<PyType>,
    pub result_row: Py<PyType>,
    pub dead_letter: Py<PyType>,
    pub ladder_delta: Py<PyType>,
    pub bad_line: Py<PyType>,
    pub market_change: Py<PyType>,
    pub routed_lines: Py<PyType>,
    pub sink_batch: Py<PyType>,
    pub datetime: Py<PyType>,
    pub utc: Py<PyAny>,
    pub parse_betfair_time: Py<PyAny>,
    pub betfair_time_ms: Py<PyAny>,
}

pub fn classes(py: Python<'_>) -> PyResult<&Classes> {
    static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();
    CLASSES.get_or_try_init(py, || {
        let records = py.import("operators.records")?;
        let stream_messages = py.import("operators.stream_messages")?;
        let class = |module: &Bound<'_, PyModule>, name: &str| -> PyResult<Py<PyType>> {
            Ok(module.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        let datetime = py.import("datetime")?;
        Ok(Classes {
            runner_tick: class(&records, "RunnerTick")?,
            market_tick: class(&records, "MarketTick")?,
            window_aggregate: class(&records, "WindowAggregate")?,
            market_row: class(&records, "MarketRow")?,
            runner_row: class(&records, "RunnerRow")?,
            result_row: class(&records, "ResultRow")?,
            dead_letter: class(&records, "DeadLetter")?,
            ladder_delta: class(&py.import("operators.runner_book")?, "LadderDelta")?,
            bad_line: class(&stream_messages, "BadLine")?,
            market_change: class(&stream_messages, "MarketChange")?,
            routed_lines: class(&stream_messages, "RoutedLines")?,
            sink_batch: class(&py.import("operators.market_processor")?, "SinkBatch")?,
            datetime: class(&datetime, "datetime")?,
            utc: datetime.getattr("UTC")?.unbind(),
            parse_betfair_time: py
                .import("operators.market_book")?
                .getattr("parse_betfair_time")?
                .unbind(),
            betfair_time_ms: py
                .import("operators.market_book")?
                .getattr("betfair_time_ms")?
                .unbind(),
        })
    })
}

/// A NamedTuple instance from its field values, the way `tuple.__new__(cls, values)` makes
/// it but without the intermediate tuple. A record of atomic values (numbers, strings,
/// datetimes, None) is untracked by the garbage collector at once, as CPython's collector
/// would do on its first pass, so the many records of a batch do not slow collections down.
pub fn new_record<'py, const N: usize>(
    py: Python<'py>,
    class: &Py<PyType>,
    values: [Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `tp_alloc` of a tuple subclass returns a zero-filled tuple of N items with a
    // reference count of 1 (or NULL with an exception set); `PyTuple_SetItem` steals each
    // value's reference into a slot of that fresh tuple.
    unsafe {
        let type_object = class.as_ptr() as *mut ffi::PyTypeObject;
        let alloc: ffi::allocfunc =
            std::mem::transmute(ffi::PyType_GetSlot(type_object, ffi::Py_tp_alloc));
        let record = alloc(type_object, N as ffi::Py_ssize_t);
        if record.is_null() {
            return Err(PyErr::fetch(py));
        }
        let record = Bound::from_owned_ptr(py, record);
        let mut atomic = true;
        for (index, value) in values.into_iter().enumerate() {
            atomic &=
                ffi::PyType_GetFlags(ffi::Py_TYPE(value.as_ptr())) & ffi::Py_TPFLAGS_HAVE_GC == 0;
            if ffi::PyTuple_SetItem(record.as_ptr(), index as ffi::Py_ssize_t, value.into_ptr())
                != 0
            {
                return Err(PyErr::fetch(py));
            }
        }
        if atomic {
            ffi::PyObject_GC_UnTrack(record.as_ptr().cast());
        }
        Ok(record)
    }
}

/// `parse_betfair_time(value)` of `operators.market_book`, called as is.
pub fn parse_betfair_time<'py>(py: Python<'py>, value: JsonRef<'_>) -> PyResult<Bound<'py, PyAny>> {
    if !value.is_truthy() {
        return Ok(py.None().into_bound(py));
    }
    classes(py)?
        .parse_betfair_time
        .bind(py)
        .call1((value.to_py(py)?,))
}

/// `betfair_time_ms(value)` of `operators.market_book`, called as is (ISO parsing and time
/// zones are Python's; definitions are rare): `None` where it gives None.
pub fn betfair_time_ms(py: Python<'_>, value: JsonRef<'_>) -> PyResult<Option<i64>> {
    classes(py)?
        .betfair_time_ms
        .bind(py)
        .call1((value.to_py(py)?,))?
        .extract()
}

/// A UTC time as `datetime.fromtimestamp(ms / 1000, UTC)` gives it, field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UtcTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub microsecond: u32,
    /// Seconds since 1970 (of the whole seconds above).
    pub epoch_seconds: i64,
}

const SECONDS_PER_DAY: i64 = 86_400;

impl UtcTime {
    /// CPython's steps: `ms / 1000` rounded to a double, split with `modf`, the fraction
    /// scaled to microseconds and rounded half to even, the date from `gmtime`, then the
    /// datetime's year check. Raises where CPython raises (ValueError / OverflowError).
    pub fn from_ms(ms: i128) -> PyResult<UtcTime> {
        let timestamp = int_true_divide(ms, 1000);
        let mut whole = timestamp.trunc();
        let mut fraction = round_half_even((timestamp - whole) * 1e6);
        if fraction >= 1e6 {
            fraction -= 1e6;
            whole += 1.0;
        } else if fraction < 0.0 {
            fraction += 1e6;
            whole -= 1.0;
        }
        if !(-9.223372036854776e18..9.223372036854776e18).contains(&whole) {
            return Err(PyOverflowError::new_err(
                "timestamp out of range for platform time_t",
            ));
        }
        let epoch_seconds = whole as i64;
        let days = epoch_seconds.div_euclid(SECONDS_PER_DAY);
        let of_day = epoch_seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        if i32::try_from(year - 1900).is_err() {
            // gmtime fails with EOVERFLOW, which CPython raises as an OSError.
            return Err(PyOSError::new_err((
                75,
                "Value too large for defined data type",
            )));
        }
        if !(1..=9999).contains(&year) {
            return Err(PyValueError::new_err(format!(
                "year {year} is out of range"
            )));
        }
        Ok(UtcTime {
            year,
            month,
            day,
            hour: (of_day / 3600) as u8,
            minute: (of_day % 3600 / 60) as u8,
            second: (of_day % 60) as u8,
            microsecond: fraction as u32,
            epoch_seconds,
        })
    }

    /// (seconds since 1970, microseconds): orders times.
    pub fn instant(self) -> (i64, u32) {
        (self.epoch_seconds, self.microsecond)
    }

    /// Microseconds since 2000-01-01 UTC: PostgreSQL's binary `timestamptz`.
    pub fn postgres_microseconds(self) -> i64 {
        const POSTGRES_EPOCH_SECONDS: i64 = 946_684_800;
        (self.epoch_seconds - POSTGRES_EPOCH_SECONDS) * 1_000_000 + self.microsecond as i64
    }

    pub fn to_py<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let classes = classes(py)?;
        let args = PyTuple::new(
            py,
            [
                self.year.into_pyobject(py)?.into_any(),
                self.month.into_pyobject(py)?.into_any(),
                self.day.into_pyobject(py)?.into_any(),
                self.hour.into_pyobject(py)?.into_any(),
                self.minute.into_pyobject(py)?.into_any(),
                self.second.into_pyobject(py)?.into_any(),
                self.microsecond.into_pyobject(py)?.into_any(),
                classes.utc.bind(py).clone(),
            ],
        )?;
        classes.datetime.bind(py).call1(args)
    }
}

/// CPython's `_PyTime_RoundHalfEven`.
fn round_half_even(value: f64) -> f64 {
    let rounded = value.round();
    if (value - rounded).abs() == 0.5 {
        2.0 * (value / 2.0).round()
    } else {
        rounded
    }
}

/// (year, month, day) of a day count since 1970-01-01 in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u8;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u8;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The last datetime made, reused while rows carry the same time (the rows of one message
/// share its publish time, as they share one object in the Python).
pub struct DatetimeCache<'py> {
    last: Option<(UtcTime, Bound<'py, PyAny>)>,
}

impl<'py> DatetimeCache<'py> {
    pub fn new() -> Self {
        DatetimeCache { last: None }
    }

    pub fn get(&mut self, py: Python<'py>, time: UtcTime) -> PyResult<Bound<'py, PyAny>> {
        if let Some((cached, value)) = &self.last {
            if *cached == time {
                return Ok(value.clone());
            }
        }
        let value = time.to_py(py)?;
        self.last = Some((time, value.clone()));
        Ok(value)
    }
}

/// The last string value converted, reused while rows repeat it (statuses).
pub struct StringCache<'py> {
    last: Option<(Json, Bound<'py, PyAny>)>,
}

impl<'py> StringCache<'py> {
    pub fn new() -> Self {
        StringCache { last: None }
    }

    pub fn get(&mut self, py: Python<'py>, value: &Json) -> PyResult<Bound<'py, PyAny>> {
        let Some(text) = value.as_str() else {
            return value.to_py(py);
        };
        if let Some((cached, object)) = &self.last {
            if cached.as_str() == Some(text) {
                return Ok(object.clone());
            }
        }
        let object = value.to_py(py)?;
        self.last = Some((value.clone(), object.clone()));
        Ok(object)
    }
}
