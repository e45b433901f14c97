// Publish reference events for keyhole, as a data owner does (docs/data-owners.md): binary-mode
// CloudEvents (ce_* headers, an empty value), keyed by the entity id, from an idempotent producer
// with acks=all, each send confirmed. The same two events as publish.py: an entity update, and a
// request with replyto. The topics must exist (publish.py --create-topics creates them).
//
// Written against confluent-kafka-go v2. In a directory of its own:
//
//	go mod init publish && go mod tidy && go run . -bootstrap 127.0.0.1:9092
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// attribute is one CloudEvents attribute, sent as the header ce_<name>.
type attribute struct{ name, value string }

// newID returns a random (version 4) UUID for the CloudEvents id.
func newID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// send publishes one reference event and waits for the broker's confirmation. The value is
// empty, never nil: on a compacted topic a nil value is a tombstone.
func send(p *kafka.Producer, topic, key string, attributes []attribute) (*kafka.Message, error) {
	headers := make([]kafka.Header, 0, len(attributes))
	for _, a := range attributes {
		headers = append(headers, kafka.Header{Key: "ce_" + a.name, Value: []byte(a.value)})
	}
	delivery := make(chan kafka.Event, 1)
	err := p.Produce(&kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
		Key:            []byte(key),
		Value:          []byte{},
		Headers:        headers,
	}, delivery)
	if err != nil {
		return nil, err
	}
	select {
	case event := <-delivery:
		message, ok := event.(*kafka.Message)
		if !ok {
			return nil, fmt.Errorf("unexpected delivery event: %v", event)
		}
		return message, message.TopicPartition.Error
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("no confirmation from the broker within 30 s")
	}
}

func main() {
	bootstrap := flag.String("bootstrap", "127.0.0.1:9092", "Kafka bootstrap servers (host:port,...)")
	topic := flag.String("topic", "customer-references", "the topic keyhole consumes")
	replyTopic := flag.String("reply-topic", "customer-age-bands", "the request's replyto")
	customer := flag.String("customer", "42", "the entity: customer id")
	source := flag.String("source", "urn:example:crm", "CloudEvents source of your events")
	flag.Parse()

	p, err := kafka.NewProducer(&kafka.ConfigMap{
		"bootstrap.servers":  *bootstrap,
		"client.id":          "data-owner-publish-go",
		"enable.idempotence": true, // a retried send is never written twice, order is kept
		"acks":               "all",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer p.Close()

	key := "customer-" + *customer // the entity id: one customer's events stay in order
	now := time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00")
	dataref := "customers/" + *customer

	// 1. An entity update: the customer changed; the reference names its current record.
	updateID := newID()
	update := []attribute{
		{"specversion", "1.0"}, {"id", updateID}, {"source", *source},
		{"type", "com.example.customer.updated"}, {"time", now},
		{"dataref", dataref}, {"subject", key},
	}
	// 2. A request: the reply goes to replyto, with ce_causationid = this event's id.
	requestID := newID()
	correlationID := "signup-" + requestID[:8]
	request := []attribute{
		{"specversion", "1.0"}, {"id", requestID}, {"source", *source},
		{"type", "com.example.customer.age-band.requested"}, {"time", now},
		{"dataref", dataref}, {"subject", key},
		{"replyto", *replyTopic}, {"correlationid", correlationID},
	}

	for _, event := range []struct {
		what       string
		id         string
		attributes []attribute
	}{{"update", updateID, update}, {"request", requestID, request}} {
		m, err := send(p, *topic, key, event.attributes)
		if err != nil {
			fmt.Fprintf(os.Stderr, "publishing the %s: %v\n", event.what, err)
			os.Exit(2)
		}
		fmt.Printf("published %s (%s, key %s) to %s[%d]@%v\n",
			event.id, event.what, key, *m.TopicPartition.Topic, m.TopicPartition.Partition, m.TopicPartition.Offset)
	}
}
