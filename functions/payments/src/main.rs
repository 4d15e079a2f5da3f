#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    saga_infra::runtime::main(
        saga_contracts::topology::Function::Payments,
        saga_payments::router,
    )
    .await
}
