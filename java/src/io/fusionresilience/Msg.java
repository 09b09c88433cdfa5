package io.fusionresilience;

import java.io.IOException;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.msgpack.core.MessageBufferPacker;
import org.msgpack.core.MessageFormat;
import org.msgpack.core.MessagePack;
import org.msgpack.core.MessagePackException;
import org.msgpack.core.MessageUnpacker;

/**
 * MessagePack helpers over the msgpack-core copy shipped in Ray's {@code ray_dist.jar}.
 *
 * <p>MessagePack is the only format state and call arguments use when they cross between Java
 * and Python: Python's {@code msgpack.unpackb(data, raw=False)} reads what these helpers write,
 * and {@code resilience._java.pack} writes what they read. Mapping of types:
 *
 * <pre>
 *   MessagePack   Java (pack accepts)                 Java (unpack returns)   Python
 *   nil           null                                null                    None
 *   bool          Boolean                             Boolean                 bool
 *   int           Byte, Short, Integer, Long, BigInt  Long (BigInteger > 2^63-1) int
 *   float         Float, Double (written as float64)  Double                  float
 *   str           String                              String                  str
 *   bin           byte[]                              byte[]                  bytes
 *   array         List, Object[]                      List&lt;Object&gt;      list
 *   map           Map                                 Map&lt;Object,Object&gt; dict
 * </pre>
 *
 * <p>Maps whose keys are all Strings are written sorted by key, so equal maps always give equal
 * bytes (snapshots are compared and checksummed). Every decoding error, including trailing bytes
 * after the value, is reported as an {@link IllegalArgumentException} saying what was expected.
 */
public final class Msg {

  private Msg() {}

  /** Packs one value (see the class comment for the accepted types). */
  public static byte[] pack(Object value) {
    MessageBufferPacker packer = MessagePack.newDefaultBufferPacker();
    try {
      write(packer, value);
      packer.close();
    } catch (IOException e) {
      // A buffer packer writes to memory: an IOException here is a bug, not an input error.
      throw new IllegalStateException("MessagePack packing failed in memory", e);
    }
    return packer.toByteArray();
  }

  /** Packs positional call arguments as a MessagePack array (the {@code apply} convention). */
  public static byte[] packArgs(Object... args) {
    return pack(Arrays.asList(args));
  }

  /**
   * Unpacks exactly one value from {@code data}.
   *
   * @throws IllegalArgumentException if {@code data} is not exactly one MessagePack value
   */
  public static Object unpack(byte[] data) {
    if (data == null) {
      throw new IllegalArgumentException("expected MessagePack bytes, got null");
    }
    try (MessageUnpacker unpacker = MessagePack.newDefaultUnpacker(data)) {
      if (!unpacker.hasNext()) {
        throw new IllegalArgumentException("expected one MessagePack value, got 0 bytes");
      }
      Object value = read(unpacker);
      if (unpacker.hasNext()) {
        throw new IllegalArgumentException(
            "trailing bytes after the MessagePack value (read "
                + unpacker.getTotalReadBytes()
                + " of "
                + data.length
                + ")");
      }
      return value;
    } catch (IOException | MessagePackException e) {
      throw new IllegalArgumentException("not valid MessagePack: " + e.getMessage(), e);
    }
  }

  /**
   * Unpacks call arguments: a MessagePack array of positional arguments.
   *
   * @throws IllegalArgumentException if {@code args} is not a MessagePack array
   */
  public static List<Object> unpackArgs(byte[] args) {
    Object value = unpack(args);
    if (!(value instanceof List)) {
      throw new IllegalArgumentException(
          "call arguments must be a MessagePack array, got " + typeName(value));
    }
    @SuppressWarnings("unchecked")
    List<Object> list = (List<Object>) value;
    return list;
  }

  /** Packs a String to long map (sorted by key). */
  public static byte[] packLongMap(Map<String, Long> map) {
    return pack(map);
  }

  /**
   * Unpacks a MessagePack map of str to int into a new mutable map.
   *
   * @throws IllegalArgumentException if {@code data} is not such a map (wrong types, a value out
   *     of the long range, trailing bytes, invalid MessagePack)
   */
  public static Map<String, Long> unpackLongMap(byte[] data) {
    Object value = unpack(data);
    if (!(value instanceof Map)) {
      throw new IllegalArgumentException(
          "expected a MessagePack map of str to int, got " + typeName(value));
    }
    Map<?, ?> raw = (Map<?, ?>) value;
    Map<String, Long> out = new HashMap<>(raw.size() * 2);
    for (Map.Entry<?, ?> e : raw.entrySet()) {
      if (!(e.getKey() instanceof String)) {
        throw new IllegalArgumentException(
            "expected a map of str to int, got a key of type " + typeName(e.getKey()));
      }
      out.put((String) e.getKey(), toLong(e.getValue(), "value of key '" + e.getKey() + "'"));
    }
    return out;
  }

  /**
   * The long held by an unpacked value.
   *
   * @param what names the value in the error message
   * @throws IllegalArgumentException if {@code value} is not an integer in the long range
   */
  public static long toLong(Object value, String what) {
    if (value instanceof Long) {
      return (Long) value;
    }
    if (value instanceof BigInteger) {
      throw new IllegalArgumentException(what + " is out of the 64-bit signed range: " + value);
    }
    throw new IllegalArgumentException(what + " must be an int, got " + typeName(value));
  }

  /**
   * The String held by an unpacked value.
   *
   * @throws IllegalArgumentException if {@code value} is not a String
   */
  public static String toStr(Object value, String what) {
    if (value instanceof String) {
      return (String) value;
    }
    throw new IllegalArgumentException(what + " must be a str, got " + typeName(value));
  }

  /** The MessagePack/Python name of an unpacked value's type, for error messages. */
  public static String typeName(Object value) {
    if (value == null) {
      return "nil";
    }
    if (value instanceof Boolean) {
      return "bool";
    }
    if (value instanceof Long || value instanceof BigInteger) {
      return "int";
    }
    if (value instanceof Double) {
      return "float";
    }
    if (value instanceof String) {
      return "str";
    }
    if (value instanceof byte[]) {
      return "bin";
    }
    if (value instanceof List) {
      return "array";
    }
    if (value instanceof Map) {
      return "map";
    }
    return value.getClass().getName();
  }

  // -- streaming: for hot paths that read or write records without building object trees -----

  /** A packer writing to memory; {@code toByteArray()} gives the bytes. */
  static MessageBufferPacker packer() {
    return MessagePack.newDefaultBufferPacker();
  }

  /** An unpacker over {@code data}. */
  static MessageUnpacker unpacker(byte[] data) {
    if (data == null) {
      throw new IllegalArgumentException("expected MessagePack bytes, got null");
    }
    return MessagePack.newDefaultUnpacker(data);
  }

  /** Reads a float64/float32 or an int as a double (Python callers may send 0 for 0.0). */
  static double readDouble(MessageUnpacker unpacker) throws IOException {
    if (unpacker.getNextFormat().getValueType().isIntegerType()) {
      return unpacker.unpackLong();
    }
    return unpacker.unpackDouble();
  }

  // -- the generic tree codec --------------------------------------------------------------

  private static void write(MessageBufferPacker packer, Object value) throws IOException {
    if (value == null) {
      packer.packNil();
    } else if (value instanceof Boolean) {
      packer.packBoolean((Boolean) value);
    } else if (value instanceof Long
        || value instanceof Integer
        || value instanceof Short
        || value instanceof Byte) {
      packer.packLong(((Number) value).longValue());
    } else if (value instanceof BigInteger) {
      packer.packBigInteger((BigInteger) value);
    } else if (value instanceof Double || value instanceof Float) {
      packer.packDouble(((Number) value).doubleValue());
    } else if (value instanceof String) {
      packer.packString((String) value);
    } else if (value instanceof byte[]) {
      byte[] bytes = (byte[]) value;
      packer.packBinaryHeader(bytes.length);
      packer.writePayload(bytes);
    } else if (value instanceof Object[]) {
      writeAll(packer, Arrays.asList((Object[]) value));
    } else if (value instanceof Collection) {
      writeAll(packer, (Collection<?>) value);
    } else if (value instanceof Map) {
      Map<?, ?> map = (Map<?, ?>) value;
      if (map.keySet().stream().allMatch(k -> k instanceof String)) {
        TreeMap<String, Object> sorted = new TreeMap<>();
        map.forEach((k, v) -> sorted.put((String) k, v));
        map = sorted;
      }
      packer.packMapHeader(map.size());
      for (Map.Entry<?, ?> e : map.entrySet()) {
        write(packer, e.getKey());
        write(packer, e.getValue());
      }
    } else {
      throw new IllegalArgumentException(
          "cannot pack a " + value.getClass().getName() + " as MessagePack");
    }
  }

  private static void writeAll(MessageBufferPacker packer, Collection<?> items)
      throws IOException {
    packer.packArrayHeader(items.size());
    for (Object item : items) {
      write(packer, item);
    }
  }

  private static Object read(MessageUnpacker unpacker) throws IOException {
    MessageFormat format = unpacker.getNextFormat();
    switch (format.getValueType()) {
      case NIL:
        unpacker.unpackNil();
        return null;
      case BOOLEAN:
        return unpacker.unpackBoolean();
      case INTEGER:
        if (format == MessageFormat.UINT64) {
          BigInteger big = unpacker.unpackBigInteger();
          return big.bitLength() < 64 ? (Object) big.longValue() : big;
        }
        return unpacker.unpackLong();
      case FLOAT:
        return unpacker.unpackDouble();
      case STRING:
        return unpacker.unpackString();
      case BINARY:
        return unpacker.readPayload(unpacker.unpackBinaryHeader());
      case ARRAY:
        {
          int n = unpacker.unpackArrayHeader();
          // The header is untrusted input: never size a buffer from it alone.
          List<Object> list = new ArrayList<>(Math.min(n, 1024));
          for (int i = 0; i < n; i++) {
            list.add(read(unpacker));
          }
          return list;
        }
      case MAP:
        {
          int n = unpacker.unpackMapHeader();
          Map<Object, Object> map = new LinkedHashMap<>(Math.min(n, 1024) * 2);
          for (int i = 0; i < n; i++) {
            Object key = read(unpacker);
            map.put(key, read(unpacker));
          }
          return map;
        }
      default:
        throw new IllegalArgumentException(
            "unsupported MessagePack type " + format.getValueType() + " (extension types)");
    }
  }
}
