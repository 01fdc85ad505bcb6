//! Isolated multi-node network labs on one Linux machine.
