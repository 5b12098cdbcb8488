//! rumqttc MQTT 5 clients for the tests, driven in the background like the 3.1.1 ones.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet, Publish, SubAck};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::WAIT;

pub use rumqttc::v5::mqttbytes::QoS;

pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

pub struct Client5 {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    task: JoinHandle<()>,
}

impl Client5 {
    pub async fn connect(options: MqttOptions) -> (Client5, ConnAck) {
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    return;
                }
            }
        });
        let mut client = Client5 {
            client,
            events,
            task,
        };
        let connack = client
            .next_matching(|event| match event {
                Event::Incoming(Packet::ConnAck(connack)) => Some(connack.clone()),
                _ => None,
            })
            .await
            .expect("CONNACK");
        (client, connack)
    }

    pub async fn simple(addr: SocketAddr, id: &str) -> Client5 {
        Client5::connect(options(addr, id)).await.0
    }

    pub async fn next_matching<T>(
        &mut self,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| "timed out".to_owned())?
                .ok_or_else(|| "event loop ended".to_owned())?;
            match event {
                Ok(event) => {
                    if let Some(found) = pick(&event) {
                        return Ok(found);
                    }
                }
                Err(error) => return Err(format!("connection error: {error}")),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        self.suback().await
    }

    pub async fn suback(&mut self) -> SubAck {
        self.next_matching(|event| match event {
            Event::Incoming(Packet::SubAck(suback)) => Some(suback.clone()),
            _ => None,
        })
        .await
        .expect("SUBACK")
    }

    pub async fn recv(&mut self) -> Publish {
        self.next_matching(|event| match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await
        .expect("a PUBLISH")
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection after it.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        let _ = self
            .next_matching(|event| {
                matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)).then_some(())
            })
            .await;
        // The event loop ends with an error once the broker closes the socket.
        let _ = self.next_matching(|_| None::<()>).await;
    }

    pub fn kill(self) {
        self.task.abort();
    }
}
