"""Java, one room: the bridge (`_bridge`: build the jar, create and call Java actors,
MessagePack both ways) and Java actors under `@resilient` (`_actor`). The public names
are in `resilience.java`."""
