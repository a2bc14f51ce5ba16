"""The networks and their model files: transparent VAE, SD1.5 attention sharing, the model store."""
