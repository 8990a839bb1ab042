//! airssys-operator: placeholder entry point until the controllers land (issue 4).
fn main() {}
