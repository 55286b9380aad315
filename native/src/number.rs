//! JSON numbers with Python's arithmetic: orjson hands the Python code `int`s and `float`s, and
//! the reference operators mix them freely (`size - old`, `a + b + c`, `back / total`). The
//! result's type and its last bit depend on those rules, so they are reproduced here exactly:
//! int op int stays an exact integer, anything with a float converts the int to the nearest
//! double first (CPython's `PyLong_AsDouble`), comparisons between ints and floats are exact,
//! and int / int is the correctly rounded quotient (CPython's `long_true_divide`).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// A number as orjson gives it to Python: an int in 64-bit range or a float (never NaN/inf).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Num {
    Int(i64),
    /// An int above `i64::MAX` (orjson keeps ints up to `u64::MAX`).
    UInt(u64),
    Float(f64),
}

/// The result of arithmetic on `Num`s: an exact integer or a float.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Wide {
    Int(i128),
    Float(f64),
}

impl Num {
    pub fn wide(self) -> Wide {
        match self {
            Num::Int(value) => Wide::Int(value as i128),
            Num::UInt(value) => Wide::Int(value as i128),
            Num::Float(value) => Wide::Float(value),
        }
    }

    pub fn to_f64(self) -> f64 {
        match self {
            Num::Int(value) => value as f64,
            Num::UInt(value) => value as f64,
            Num::Float(value) => value,
        }
    }

    /// The value of a Python `int` (not of a float).
    pub fn as_int(self) -> Option<i128> {
        match self.wide() {
            Wide::Int(value) => Some(value),
            Wide::Float(_) => None,
        }
    }

    /// Python's `bool(number)`.
    pub fn is_nonzero(self) -> bool {
        match self {
            Num::Int(value) => value != 0,
            Num::UInt(_) => true,
            Num::Float(value) => value != 0.0,
        }
    }

    pub fn is_non_negative(self) -> bool {
        match self {
            Num::Int(value) => value >= 0,
            Num::UInt(_) => true,
            Num::Float(value) => value >= 0.0,
        }
    }

    /// Python's `a == b` (exact across int and float).
    pub fn py_eq(self, other: Num) -> bool {
        self.py_cmp(other) == Ordering::Equal
    }

    pub fn py_cmp(self, other: Num) -> Ordering {
        const EXACT: i64 = 1 << 53;
        match (self, other) {
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (Num::Int(a), Num::Float(b)) if (-EXACT..=EXACT).contains(&a) => {
                (a as f64).partial_cmp(&b).unwrap_or(Ordering::Equal)
            }
            (Num::Float(a), Num::Int(b)) if (-EXACT..=EXACT).contains(&b) => {
                a.partial_cmp(&(b as f64)).unwrap_or(Ordering::Equal)
            }
            _ => compare(self.wide(), other.wide()),
        }
    }
}

impl Wide {
    pub const ZERO_FLOAT: Wide = Wide::Float(0.0);

    /// `float(x)`: ints round to the nearest double, ties to even, as CPython does.
    pub fn to_f64(self) -> f64 {
        match self {
            Wide::Int(value) => match i64::try_from(value) {
                Ok(small) => small as f64,
                Err(_) => value as f64,
            },
            Wide::Float(value) => value,
        }
    }

    pub fn is_positive(self) -> bool {
        match self {
            Wide::Int(value) => value > 0,
            Wide::Float(value) => value > 0.0,
        }
    }

    pub fn is_negative(self) -> bool {
        match self {
            Wide::Int(value) => value < 0,
            Wide::Float(value) => value < 0.0,
        }
    }

    pub fn add(self, other: Wide) -> Wide {
        match (self, other) {
            (Wide::Int(a), Wide::Int(b)) => Wide::Int(a + b),
            _ => Wide::Float(self.to_f64() + other.to_f64()),
        }
    }

    pub fn sub(self, other: Wide) -> Wide {
        match (self, other) {
            (Wide::Int(a), Wide::Int(b)) => Wide::Int(a - b),
            _ => Wide::Float(self.to_f64() - other.to_f64()),
        }
    }

    /// `float(self * other)` where an int product is exact before it is rounded once.
    ///
    /// Operands are at most 65-bit ints (stream numbers and their differences), so the
    /// product's magnitude fits in 128 bits.
    pub fn mul_to_f64(self, other: Wide) -> f64 {
        match (self, other) {
            (Wide::Int(a), Wide::Int(b)) => {
                let magnitude = a.unsigned_abs() * b.unsigned_abs();
                let rounded = magnitude as f64;
                if (a < 0) != (b < 0) {
                    -rounded
                } else {
                    rounded
                }
            }
            _ => self.to_f64() * other.to_f64(),
        }
    }

    /// Python's `self / other` (true division; `other` is non-zero).
    pub fn true_div(self, other: Wide) -> f64 {
        match (self, other) {
            (Wide::Int(a), Wide::Int(b)) => int_true_divide(a, b),
            _ => self.to_f64() / other.to_f64(),
        }
    }
}

const EXACT_IN_DOUBLE: u128 = 1 << 53;

/// Correctly rounded `a / b` for ints (what CPython's `int / int` returns).
pub fn int_true_divide(a: i128, b: i128) -> f64 {
    let negative = (a < 0) != (b < 0);
    let (numerator, denominator) = (a.unsigned_abs(), b.unsigned_abs());
    let magnitude = if numerator <= EXACT_IN_DOUBLE && denominator <= EXACT_IN_DOUBLE {
        numerator as f64 / denominator as f64
    } else {
        rounded_quotient(numerator, denominator)
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// `numerator / denominator` rounded to nearest, ties to even, for operands below 2^70.
///
/// The quotient is computed with at least 56 significant bits plus a sticky bit for a
/// non-zero remainder; converting that to a double then rounds exactly once.
fn rounded_quotient(numerator: u128, denominator: u128) -> f64 {
    if numerator == 0 {
        return 0.0;
    }
    let numerator_bits = 128 - numerator.leading_zeros() as i32;
    let denominator_bits = 128 - denominator.leading_zeros() as i32;
    let shift = (56 + denominator_bits - numerator_bits).max(0);
    let scaled = numerator << shift;
    let mut quotient = scaled / denominator;
    let mut exponent = -shift;
    if !scaled.is_multiple_of(denominator) {
        quotient = (quotient << 1) | 1;
        exponent -= 1;
    }
    quotient as f64 * 2f64.powi(exponent)
}

/// Python's ordering of two numbers: exact, also between ints and floats.
pub fn compare(a: Wide, b: Wide) -> Ordering {
    match (a, b) {
        (Wide::Int(x), Wide::Int(y)) => x.cmp(&y),
        (Wide::Float(x), Wide::Float(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (Wide::Int(x), Wide::Float(y)) => compare_int_float(x, y),
        (Wide::Float(x), Wide::Int(y)) => compare_int_float(y, x).reverse(),
    }
}

fn compare_int_float(int: i128, float: f64) -> Ordering {
    if int.unsigned_abs() <= EXACT_IN_DOUBLE {
        return (int as f64).partial_cmp(&float).unwrap_or(Ordering::Equal);
    }
    const LIMIT: f64 = 170141183460469231731687303715884105728.0; // 2^127
    if float >= LIMIT {
        return Ordering::Less;
    }
    if float < -LIMIT {
        return Ordering::Greater;
    }
    let whole = float.trunc();
    match int.cmp(&(whole as i128)) {
        Ordering::Equal => 0.0f64
            .partial_cmp(&(float - whole))
            .unwrap_or(Ordering::Equal),
        unequal => unequal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_division_rounds_once() {
        let big = (1i128 << 64) - 1;
        assert_eq!(int_true_divide(big, 3), 6148914691236517205.0);
        assert_eq!(
            int_true_divide(big, big + 40),
            (big as f64) / ((big + 40) as f64)
        );
        assert_eq!(int_true_divide(7, 2), 3.5);
        assert_eq!(
            int_true_divide((1 << 60) + 1, 1 << 7),
            ((1u64 << 53) as f64)
        );
    }

    #[test]
    fn int_float_comparison_is_exact() {
        let above = (1i128 << 53) + 1;
        assert_eq!(
            compare(Wide::Int(above), Wide::Float(9007199254740992.0)),
            Ordering::Greater
        );
        assert_eq!(compare(Wide::Int(3), Wide::Float(3.0)), Ordering::Equal);
        assert_eq!(compare(Wide::Int(3), Wide::Float(3.5)), Ordering::Less);
        assert_eq!(
            compare(Wide::Int(-above), Wide::Float(-9007199254740992.0)),
            Ordering::Less
        );
    }
}
