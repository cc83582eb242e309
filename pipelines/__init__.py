"""Ready-made pipeline YAMLs (installed as `dataengine.pipelines`): `dataengine mine --config NAME`."""
