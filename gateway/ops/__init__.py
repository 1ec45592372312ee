"""Operations: metrics, health and autoconfig over HTTP, and the open-relay audit."""
