//! An order service that publishes its events through the outbox (RFC 0005 §2): each
//! order row and its `order.created` event are written in **one local transaction**, so
//! the event is published if and only if the order exists.
//!
//! ```sh
//! floe serve &                                             # an agent
//! floe topics create order --partitions 3
//! floe outbox install --db postgres://postgres@127.0.0.1/postgres
//! floe outbox run --db postgres://postgres@127.0.0.1/postgres &   # or floe serve --outbox-db ...
//! cargo run -p floe-outbox --example order_service -- postgres://postgres@127.0.0.1/postgres 10
//! floe consume order --from-beginning --json
//! ```
#![allow(clippy::print_stdout)]

use tokio_postgres::NoTls;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let orders: u32 = args.next().map_or(Ok(3), |n| n.parse())?;
    let (mut client, conn) = tokio_postgres::connect(&db, NoTls).await?;
    let driver = tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, customer text NOT NULL, total_cents bigint NOT NULL)",
        )
        .await?;
    for n in 0..orders {
        let customer = format!("customer-{}", n % 3);
        let total = 1000 + i64::from(n) * 250;
        // The business row and its event: one transaction, one commit.
        let tx = client.transaction().await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO orders (customer, total_cents) VALUES ($1, $2) RETURNING id",
                &[&customer, &total],
            )
            .await?
            .get(0);
        let event = floe_outbox::write_event(
            &tx,
            "outbox",
            "order",
            &format!("order-{id}"),
            "order.created",
            &serde_json::json!({ "order": id, "customer": customer, "total_cents": total }),
        )
        .await?;
        tx.commit().await?;
        println!("order {id} for {customer}: event {event}");
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}
