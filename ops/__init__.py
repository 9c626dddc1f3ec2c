"""Operations: CLI, settings, embedded broker, worker shell, replay, simulator, reports."""
