-- A selection is listed once per handicap line (an Asian handicap market lists each team at
-- several lines), and each line has its own definition: key runners by handicap too, like
-- every other per-runner table. Before this, the lines of a selection overwrote one another.
ALTER TABLE runners DROP CONSTRAINT runners_pkey;
ALTER TABLE runners ADD PRIMARY KEY (market_id, selection_id, handicap);
