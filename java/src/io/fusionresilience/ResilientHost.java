package io.fusionresilience;

import io.ray.api.Ray;
import java.lang.reflect.Constructor;
import java.lang.reflect.InvocationTargetException;

/**
 * A Ray actor hosting any {@link ResilientState} implementation, chosen by class name.
 *
 * <p>Created from Python with {@code
 * java_actor_class("io.fusionresilience.ResilientHost").remote("com.example.MyState")}. The host
 * is deliberately thin: the Python side does the write-ahead log, call ids, deduplication and
 * snapshot storage around it, and after a restart (which Ray performs with the actor's {@code
 * max_restarts}) it finds the host empty ({@link #restarted()} is true) and restores it.
 *
 * <p>Every method returns a value: in Ray 2.60 a {@code void} Java method called from Python
 * kills the Java worker ("1 return objects expected, 1 returned"), so methods with nothing to
 * return answer {@code true}.
 *
 * <p>Exceptions thrown by the hosted state propagate unchanged; Ray delivers them to a Python
 * caller as {@code ray.exceptions.CrossLanguageError} whose message holds the Java stack trace
 * ({@code Caused by: ...} last). On JDK 17 that needs the JVM options of {@code
 * resilience._java.JVM_OPTIONS}, which {@code resilience._java.java_actor_class} passes: without
 * them Ray cannot serialize the exception and the worker process dies instead.
 */
public final class ResilientHost {

  private final String className;
  private final ResilientState state;

  /**
   * Creates the hosted state with its public no-argument constructor.
   *
   * @param className the fully qualified name of a class implementing {@link ResilientState},
   *     found on the job's code search path
   * @throws IllegalArgumentException if the class is missing, does not implement {@link
   *     ResilientState} or has no public no-argument constructor
   */
  public ResilientHost(String className) {
    this.className = className;
    this.state = instantiate(className);
  }

  /** Applies one call to the hosted state (see {@link ResilientState#apply(String, byte[])}). */
  public byte[] apply(String method, byte[] args) {
    return state.apply(method, args);
  }

  /** The hosted state's full snapshot (MessagePack). */
  public byte[] snapshot() {
    return state.snapshot();
  }

  /**
   * Replaces the hosted state (all or nothing; throws on bytes it cannot decode).
   *
   * @return always {@code true}, once the state is replaced (see the class comment on void)
   */
  public boolean restore(byte[] snapshot) {
    state.restore(snapshot);
    return true;
  }

  /** The class name this host was created with. */
  public String stateClass() {
    return className;
  }

  /** The process id of this actor's JVM (what a test or chaos run SIGKILLs). */
  public long pid() {
    return ProcessHandle.current().pid();
  }

  /** Whether Ray restarted this actor after a crash: its state is then the empty initial one. */
  public boolean restarted() {
    return Ray.getRuntimeContext().wasCurrentActorRestarted();
  }

  private static ResilientState instantiate(String className) {
    Class<?> cls;
    try {
      cls = Class.forName(className, true, classLoader());
    } catch (ClassNotFoundException e) {
      throw new IllegalArgumentException(
          "class " + className + " not found: is its jar on the job's code_search_path?", e);
    }
    if (!ResilientState.class.isAssignableFrom(cls)) {
      throw new IllegalArgumentException(
          className + " does not implement " + ResilientState.class.getName());
    }
    try {
      Constructor<?> constructor = cls.getConstructor();
      return (ResilientState) constructor.newInstance();
    } catch (NoSuchMethodException e) {
      throw new IllegalArgumentException(
          className + " has no public no-argument constructor", e);
    } catch (InvocationTargetException e) {
      throw new IllegalStateException(
          "the constructor of " + className + " threw " + e.getCause(), e.getCause());
    } catch (ReflectiveOperationException e) {
      throw new IllegalArgumentException("cannot instantiate " + className + ": " + e, e);
    }
  }

  private static ClassLoader classLoader() {
    // Ray may load job code through the thread's context loader; fall back to ours.
    ClassLoader context = Thread.currentThread().getContextClassLoader();
    return context != null ? context : ResilientHost.class.getClassLoader();
  }
}
