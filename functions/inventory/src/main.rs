#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    saga_infra::runtime::main(
        saga_contracts::topology::Function::Inventory,
        saga_inventory::router,
    )
    .await
}
