//! `shcr serve` and `shcr migrate`.

use crate::config::Settings;
use crate::startup::Application;
use crate::store::Store;

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    let handle = app.handle();
    let search = app.search();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        handle.stop(true).await;
    });
    app.run_until_stopped().await?;
    search.shutdown().await;
    Ok(())
}

pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let store = Store::connect(settings.require_database_url()?, 2).await?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}

/// Ctrl-C or SIGTERM (Kubernetes stops pods with SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
