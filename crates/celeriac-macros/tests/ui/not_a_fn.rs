#[celeriac::task]
struct Add;

fn main() {}
