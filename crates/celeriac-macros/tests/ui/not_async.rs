#[celeriac::task]
fn add(x: i64, y: i64) -> Result<i64, celeriac::TaskError> {
    Ok(x + y)
}

fn main() {}
