//! Betfair's CLASSIC price ladder, built exactly as `operators/price_ladder.py` builds it.

use std::sync::OnceLock;

use crate::number::Num;

/// (upper bound of the band, increment within the band), in hundredths of a unit.
const BANDS_CENTS: [(u32, u32); 10] = [
    (200, 1),
    (300, 2),
    (400, 5),
    (600, 10),
    (1000, 20),
    (2000, 50),
    (3000, 100),
    (5000, 200),
    (10000, 500),
    (100000, 1000),
];

/// All 350 valid prices from 1.01 to 1000, ascending (`cents / 100` like the Python).
pub fn prices() -> &'static [f64] {
    static PRICES: OnceLock<Vec<f64>> = OnceLock::new();
    PRICES.get_or_init(|| {
        let mut cents = vec![101u32];
        for (upper, step) in BANDS_CENTS {
            while *cents.last().unwrap() < upper {
                cents.push(cents.last().unwrap() + step);
            }
        }
        cents.into_iter().map(|c| c as f64 / 100.0).collect()
    })
}

/// The ladder position of a price that is on the ladder (Python's `_INDEX.get(price)`).
pub fn exact_index(price: Num) -> Option<usize> {
    let ladder = prices();
    let target = price.to_f64();
    let position = ladder.partition_point(|p| *p < target);
    (position < ladder.len() && price.py_eq(Num::Float(ladder[position]))).then_some(position)
}

/// `tick_index`: off-ladder prices snap to the nearest valid one at or above.
pub fn tick_index(price: Num) -> i64 {
    if let Some(index) = exact_index(price) {
        return index as i64;
    }
    let ladder = prices();
    let shifted = price.to_f64() - 1e-9;
    ladder
        .partition_point(|p| *p < shifted)
        .min(ladder.len() - 1) as i64
}

pub fn ticks_between(from_price: Num, to_price: Num) -> i64 {
    tick_index(to_price) - tick_index(from_price)
}
