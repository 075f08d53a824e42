#[celeriac::task(name = "tasks.add", retries = 3)]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

fn main() {}
