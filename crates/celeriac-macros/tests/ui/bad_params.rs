struct Worker;

impl Worker {
    #[celeriac::task]
    async fn method(&self, x: i64) -> i64 {
        x
    }
}

#[celeriac::task]
async fn pattern((x, y): (i64, i64)) -> i64 {
    x + y
}

#[celeriac::task]
async fn borrowed(s: &str) -> usize {
    s.len()
}

#[celeriac::task]
async fn context_last(x: i64, ctx: celeriac::TaskContext) -> i64 {
    let _ = ctx;
    x
}

#[celeriac::task]
async fn context_ref(ctx: &celeriac::TaskContext) {
    let _ = ctx;
}

fn main() {}
