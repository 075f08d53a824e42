#[celeriac::task(name = 3)]
async fn a() {}

#[celeriac::task(priority = 10)]
async fn b() {}

#[celeriac::task(time_limit = "30s")]
async fn c() {}

#[celeriac::task(max_retries = 1, max_retries = 2)]
async fn d() {}

#[celeriac::task(retry_jitter = yes)]
async fn e() {}

fn main() {}
