"""The demo's local broker: Mosquitto when installed, amqtt otherwise; both carry real messages."""
import pytest

from medge.broker import LocalBroker
from tests.fixtures.broker import Subscriber


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_local_broker_delivers_and_restarts_on_the_same_port(tmp_path, kind):
    import paho.mqtt.client as mqtt

    with LocalBroker(kind=kind, workdir=tmp_path) as broker:
        port = broker.port
        protocol = mqtt.MQTTv5 if broker.mqtt_version == "5" else mqtt.MQTTv311
        subscriber = Subscriber(port, "medge/#", protocol=protocol)
        subscriber.wait_for(lambda s: s.subscribed.is_set(), timeout=10, what="the subscription")
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
        publisher.connect("127.0.0.1", port)
        publisher.loop_start()
        publisher.publish("medge/s/d/result", b'{"n": 1}', qos=1).wait_for_publish(timeout=10)
        subscriber.wait_for(lambda s: bool(s.payloads("result")), timeout=10, what="a delivered message")
        assert subscriber.payloads("result")[0] == {"n": 1}
        publisher.loop_stop()
        publisher.disconnect()
        subscriber.close()
        broker.kill()
        broker.start()
        assert broker.port == port
